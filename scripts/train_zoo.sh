#!/usr/bin/env bash
# Train every zoo model in sequence (each writes its checkpoint and manifest entry). ~100 min on 2 cores.
set -euo pipefail
for name in ${@:-fmnist-vit fmnist-resnet motion-vivit mosaic-segvit}; do
  .venv/bin/python -c "from prunekit.zoo.train import train_model; print(train_model('$name', threads=2, command='prunekit zoo train $name'))"
done

#!/usr/bin/env bash
# Everything prunekit wants from a lent GPU, as one `device` run: the CUDA-only tests, the 2:4
# benchmark (GPU quiet), then scripts/train_zoo_gpu.sh with this script's arguments (its RUNs).
# Set up here once per session, from the repo root:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/fmnist .gpu/whl
#   cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fmnist/
#   .venv/bin/pip download --no-deps --only-binary=:all: -d .gpu/whl timm==1.0.31
# then call the device tool with carry [".gpu"] and a command such as
#   BUDGET=7 bash scripts/device_session.sh mosaic-segvit:256:1e-3:300000 mosaic-segvit:256:1e-3:100000::stream
# (a fixed set of 300,000 mosaics against new mosaics for every batch; session 12 measured that the
# GPU stage's encoder had memorised its 96,000 mosaics: mIoU 0.689 on them, 0.610 on fresh ones)
# ($OUT comes back: cuda_tests.log, semi.log, sparsity_semi_cuda.json, one TAG.tgz per finished run;
# at most 8 files come back, so give at most 5 runs).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src PRUNEKIT_DATA=$PWD/.gpu/fmnist PRUNEKIT_CACHE=/tmp/pkc PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider -rs tests/sparse/test_kernels.py tests/data/test_mosaic_stream.py tests/zoo/test_train.py -k cuda > "$OUT/cuda_tests.log" 2>&1
tail -1 "$OUT/cuda_tests.log"
(cd benchmarks && python3 bench_sparsity_semi_cuda.py > "$OUT/semi.log" 2>&1; cp results/sparsity_semi_cuda.json "$OUT/")
tail -12 "$OUT/semi.log"
if [ $# -gt 0 ]; then bash scripts/train_zoo_gpu.sh "$@"; fi

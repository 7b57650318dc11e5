#!/usr/bin/env bash
# Continue the shipped mosaic-segvit and motion-vivit checkpoints on a GPU, two settings each, all four
# runs at once on the one GPU, each cut to a time budget; the checkpoints, manifests and logs go to
# $OUT/zoo.tgz. Run from the repo root on a machine with CUDA, PyTorch, timm and Fashion-MNIST
# (PRUNEKIT_DATA). Settings via env: DEVICE (cuda), BUDGET (minutes of training per run, 5),
# NSEG (training mosaics, 96000), NVID (training clips, 120000), EPOCHS (asked, before the budget cuts,
# 60), QUICK (1: a smoke run on 512 samples), WORKERS (14).
set -u
DEVICE=${DEVICE:-cuda} BUDGET=${BUDGET:-5} NSEG=${NSEG:-96000} NVID=${NVID:-120000} OUT=${OUT:-/tmp/zoo-gpu}
export PRUNEKIT_WORKERS=${WORKERS:-14} PYTHONUNBUFFERED=1
quick=""; [ "${QUICK:-0}" = 1 ] && quick="--quick"
runs=/tmp/zoo-gpu-runs; rm -rf "$runs"; mkdir -p "$runs" "$OUT"
pk() { python3 -m prunekit "$@"; }
t0=$(date +%s)
if [ -z "$quick" ]; then  # build the generated sets once, on WORKERS cores, before the runs share them
  python3 -c "from prunekit.data import load_mosaic, load_motion
load_mosaic('train', n=$NSEG); load_mosaic('test', n=2000); load_motion('train', n=$NVID); load_motion('test', n=2000)"
fi
echo "data ready after $(( $(date +%s) - t0 )) s"
train() {  # NAME TAG BATCH LR SAMPLES
  OMP_NUM_THREADS=3 pk zoo train "$1" $quick --more-epochs "${EPOCHS:-60}" --device "$DEVICE" --batch "$3" --lr "$4" \
    --samples "$5" --budget-minutes "$BUDGET" --out-dir "$runs/$2" > "$runs/$2.log" 2>&1
  echo "$2 exited $? after $(( $(date +%s) - t0 )) s"
}
train mosaic-segvit seg-a 256 5e-4 "$NSEG" &
train mosaic-segvit seg-b 256 1e-3 "$NSEG" &
train motion-vivit vid-a 256 4e-4 "$NVID" &
train motion-vivit vid-b 128 2e-4 "$NVID" &
wait
for f in "$runs"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -4; done
tar czf "$OUT/zoo.tgz" -C "$runs" .

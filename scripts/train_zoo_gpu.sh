#!/usr/bin/env bash
# Continue shipped zoo checkpoints on a GPU: every RUN (NAME:BATCH:LR:SAMPLES[:SHIFT[:stream]], SHIFT for
# mosaic-segvit's --shift) at once on the one GPU,
# each cut to a time budget. Each run's checkpoint, manifest and log go to $OUT/TAG.tgz as soon as it
# ends, so finished runs come back even if the call is stopped (pick the best, install it into
# src/prunekit/zoo/). The budget covers training only: data building, loading and evaluation come on top. Run from the repo root on a machine with CUDA, PyTorch, timm and
# Fashion-MNIST (PRUNEKIT_DATA). Env: DEVICE (cuda), BUDGET (training minutes per run, 5), EPOCHS
# (asked before the budget cuts, 60), QUICK (1: a smoke run on 512 samples), WORKERS (14).
# A sixth RUN field "stream" (mosaic-segvit, e.g. mosaic-segvit:256:1e-3:300000::stream) draws new
# mosaics for every batch, rendered on the GPU, instead of a fixed set: SAMPLES is then only the epoch
# length, and nothing is built first.
# Session 11 ran it with no RUN arguments, i.e. the four runs below, and BUDGET=6:
#   scripts/train_zoo_gpu.sh mosaic-segvit:256:5e-4:96000 mosaic-segvit:256:1e-3:96000 \
#                            motion-vivit:256:4e-4:120000 motion-vivit:128:2e-4:120000
set -u
DEVICE=${DEVICE:-cuda} BUDGET=${BUDGET:-5} OUT=${OUT:-/tmp/zoo-gpu}
export PRUNEKIT_WORKERS=${WORKERS:-14} PYTHONUNBUFFERED=1
[ $# -eq 0 ] && set -- mosaic-segvit:256:5e-4:96000 mosaic-segvit:256:1e-3:96000 \
                       motion-vivit:256:4e-4:120000 motion-vivit:128:2e-4:120000
for run in "$@"; do  # refuse a malformed RUN before any device minute goes into building data
  IFS=: read -r name batch lr n shift mode <<< "$run"
  case $name in mosaic-segvit|motion-vivit|fmnist-vit) ;; *) echo "RUN $run: unknown model $name" >&2; exit 2 ;; esac
  [[ $batch =~ ^[0-9]+$ && $n =~ ^[0-9]+$ ]] || { echo "RUN $run: BATCH and SAMPLES must be whole numbers" >&2; exit 2; }
  [[ -z $shift || $shift =~ ^[0-9]+$ ]] || { echo "RUN $run: SHIFT (field 5) must be a whole number or empty" >&2; exit 2; }
  case $mode in "") ;; stream) [ "$name" = mosaic-segvit ] || { echo "RUN $run: stream is for mosaic-segvit" >&2; exit 2; } ;;
    *) echo "RUN $run: field 6 must be empty or 'stream'" >&2; exit 2 ;; esac
done
quick=""; [ "${QUICK:-0}" = 1 ] && quick="--quick"
runs=/tmp/zoo-gpu-runs; rm -rf "$runs"; mkdir -p "$runs" "$OUT"
t0=$(date +%s)
if [ -z "$quick" ]; then  # build each generated set once, on WORKERS cores, before the runs share them
  for run in "$@"; do IFS=: read -r name _ _ n _ mode <<< "$run"
    case $name in
      mosaic-segvit) if [ "$mode" = stream ]; then echo "load_mosaic('test', n=2000)"
                     else echo "load_mosaic('train', n=$n); load_mosaic('test', n=2000)"; fi ;;
      motion-vivit) echo "load_motion('train', n=$n); load_motion('test', n=2000)" ;;
    esac
  done | sort -u | (echo "from prunekit.data import load_mosaic, load_motion"; cat) | python3 - || exit 1
fi
echo "data ready after $(( $(date +%s) - t0 )) s"
for run in "$@"; do
  IFS=: read -r name batch lr n shift mode <<< "$run"; tag="$name-$batch-$lr-$n${shift:+-shift$shift}"
  stream=""; [ "$mode" = stream ] && stream="--stream" && tag="$tag-stream"
  ( OMP_NUM_THREADS=3 python3 -m prunekit zoo train "$name" $quick --more-epochs "${EPOCHS:-60}" --device "$DEVICE" \
      --batch "$batch" --lr "$lr" --samples "$n" --budget-minutes "$BUDGET" ${shift:+--shift "$shift"} $stream \
      --out-dir "$runs/$tag" > "$runs/$tag.log" 2>&1
    echo "$tag exited $? after $(( $(date +%s) - t0 )) s"
    tar czf "$OUT/$tag.tgz" -C "$runs" "$tag.log" $( [ -d "$runs/$tag" ] && echo "$tag" ) ) &
done
wait
for f in "$runs"/*.log; do echo "== $f"; tr '\r' '\n' < "$f" | grep -E 'more:|"(miou|top1)"' | tail -3; done

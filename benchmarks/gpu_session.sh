#!/usr/bin/env bash
# One prepared GPU session: everything the GPU path needs measured, in order, each part bounded in time, every
# result written under $OUT as it goes (a part cut short still leaves its log and what it measured).
#
#   OUT=/path bash benchmarks/gpu_session.sh            # on a machine with a CUDA GPU (about 14 minutes)
#   OUT=/path bash benchmarks/gpu_session.sh --dry      # anywhere: every part on the CPU at toy size
#
# Everything is written under $WORK (default /tmp/alexnet-gpu-session); after each part $OUT receives
# summary.txt and session.tgz (every log, metrics.jsonl, config.yaml and JSON result; no checkpoints or
# images), few files, as a machine that returns only a handful of files from $OUT needs. Python: .venv's when
# there is one, else the python3 on PATH with src/ on PYTHONPATH (a GPU image with torch already installed).
#
# Parts (limits in seconds; the sum fits 15 minutes with the set-up):
#   1. tests   pytest -m gpu, and 50 training steps of every preset on CUDA (generated images)        150
#   2. lrn     the Triton LRN kernels against the eager passes and without LRN (bench_gpu --variants)   90
#   3. pipe    store -> loader -> augmentation -> paper net at batch 128 and 1024, eager and compiled,
#              store in host and GPU memory, raw and JPEG (CPU decode and nvJPEG) (bench_gpu --jpeg)   240
#   4. long    side by side on the one GPU, each a process with a time cap: lrn-cifar --schedule paper
#              with and without LRN, the ablations at 28 epochs (seed 0), the photos preset at a budget 300
# Data: part 3 reads the 250 ImageNet photos of shared/data/imagenet-samples (copy ../shared/data/imagenet-samples
# into the checkout's own shared/data/, which git ignores and the device tool carries; or set
# ALEXNET_BENCH_DATA). Part 4: $ALEXNET_CIFAR (a prepared CIFAR-10 store; default shared/data/cifar-store when
# present) and $ALEXNET_PHOTOS (a prepared photo store; default shared/data/photos-store when present); a part
# without its data says so in summary.txt.
# --dry runs parts 1 and 4 for real on the CPU at toy size (generated images, a few steps), and checks that
# the GPU benchmarks of parts 2 and 3 parse their arguments, so that the device minutes go to measuring.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-benchmarks/out/gpu-session}
RESULTS=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
WORK=${WORK:-/tmp/alexnet-gpu-session}
rm -rf "$WORK" && mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
ALEXNET="$PY -m alexnet"
if [ -d shared/data ]; then
    export ALEXNET_BENCH_DATA=${ALEXNET_BENCH_DATA:-$PWD/shared/data}
    [ -d shared/data/cifar-store ] && ALEXNET_CIFAR=${ALEXNET_CIFAR:-$PWD/shared/data/cifar-store}
    [ -d shared/data/photos-store ] && ALEXNET_PHOTOS=${ALEXNET_PHOTOS:-$PWD/shared/data/photos-store}
fi
OUT=$WORK  # below, every part writes into the work folder; pack() copies what is worth keeping to $RESULTS

pack() {
    cp "$SUMMARY" "$RESULTS/summary.txt"
    (cd "$WORK" && find . \( -name "*.log" -o -name "*.json" -o -name "*.jsonl" -o -name "*.yaml" -o -name "*.txt" \
        -o -name "*.md" \) -not -path "./data/*" -print0 | tar czf "$RESULTS/session.tgz" --null -T -)
}
if [ "$DRY" = 1 ]; then
    DEVICE=cpu; STEPS=3; SMALL="optim.batch_size=8 train.limit_val=16 train.threads=1"; LONG=240
else
    DEVICE=cuda; STEPS=50; SMALL=""; LONG=300
fi

# part NAME LIMIT COMMAND...: run with a time cap, log to $OUT/NAME.log, one line in summary.txt
part() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (at most ${limit}s): $*" | tee -a "$OUT/commands.txt"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    pack
}

note() { echo "$1" | tee -a "$SUMMARY"; }

$PY - > "$OUT/machine.json" <<'EOF'
import json, platform, sys, torch
info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, memory_gb=p.total_memory / 2**30, capability=f"{p.major}.{p.minor}")
print(json.dumps(info))
EOF

# generated images: a 256 store for the 224 presets, a 32 store for the CIFAR-10 presets
DATA="$OUT/data"
if [ ! -f "$DATA/s256/manifest.json" ]; then
    $PY -c "from alexnet.prepare.synthetic import write_image_folder as w; w('$DATA/shapes256', 20, 4, size=256); w('$DATA/shapes32', 40, 8, size=32)"
    $ALEXNET prepare "$DATA/shapes256" --out "$DATA/s256" --quiet
    $ALEXNET prepare "$DATA/shapes32" --out "$DATA/s32" --size 32 --quiet
fi

# 1. tests and a short run of every preset
if [ "$DRY" = 1 ]; then
    part tests 150 $PY -m pytest -q -m gpu tests/test_gpu.py
else
    part tests 150 $PY -m pytest -q -m gpu -x tests/test_gpu.py
fi
for preset in paper one-tower photos cifar cifar-ingredients figure1 cifar-convnet demo; do
    case $preset in paper|one-tower|photos|demo) store="$DATA/s256" ;; *) store="$DATA/s32" ;; esac
    part "steps-$preset" 60 $ALEXNET train --preset "$preset" --data "$store" --out "$OUT/runs/$preset" \
        --device "$DEVICE" --no-progress train.max_steps=$STEPS train.log_every=10 $SMALL
done

# 2. and 3. the GPU benchmarks
if [ "$DRY" = 1 ]; then
    part lrn 30 $PY benchmarks/bench_gpu.py --help
    part pipe 30 $PY benchmarks/bench_gpu.py --help
else
    part lrn 90 $PY benchmarks/bench_gpu.py --variants --batches 128,1024 --steps 20 --json "$OUT/lrn.json"
    part pipe 240 $PY benchmarks/bench_gpu.py --batches 128,1024 --steps 30 --jpeg --json "$OUT/pipe.json"
fi

# 4. the long runs, side by side on the one GPU, each capped at $LONG seconds (their logs and metrics stay)
CIFAR=${ALEXNET_CIFAR:-}
if [ -z "$CIFAR" ] && [ "$DRY" = 1 ]; then CIFAR="$DATA/s32"; fi
EXTRA=""
ONLY=""
ABLATE="--epochs 28"
if [ "$DRY" = 1 ]; then
    EXTRA="train.device=cpu train.threads=1 optim.batch_size=8 train.limit_val=16"
    ONLY="--only all"
    ABLATE="--epochs 1 --train-images 64"  # whole epochs: the table reads each run's last
fi
if [ -n "$CIFAR" ]; then
    STEPS_CAP=""
    [ "$DRY" = 1 ] && STEPS_CAP="train.max_steps=2"
    part lrn-cifar-lrn "$LONG" $ALEXNET reproduce lrn-cifar --data "$CIFAR" --out "$OUT/long/lrn-cifar" \
        --schedule paper --seed 0 --only lrn --no-progress $EXTRA $STEPS_CAP &
    part lrn-cifar-no-lrn "$LONG" $ALEXNET reproduce lrn-cifar --data "$CIFAR" --out "$OUT/long/lrn-cifar" \
        --schedule paper --seed 0 --only no_lrn --no-progress $EXTRA $STEPS_CAP &
    part ablations "$LONG" $ALEXNET reproduce ablations --data "$CIFAR" --out "$OUT/long/ablations" \
        --seed 0 $ABLATE --no-progress $ONLY $EXTRA &
else
    note "long CIFAR-10 runs: skipped, no data (set ALEXNET_CIFAR to a CIFAR-10 store or folder)"
fi
PHOTOS=${ALEXNET_PHOTOS:-}
if [ -z "$PHOTOS" ] && [ "$DRY" = 1 ]; then PHOTOS="$DATA/s256"; fi
if [ -n "$PHOTOS" ]; then
    if [ "$DRY" = 1 ]; then
        part photos "$LONG" $ALEXNET train --preset photos --data "$PHOTOS" --out "$OUT/long/photos" --budget 20s \
            --device cpu --no-progress $SMALL &
    else
        part photos "$LONG" $ALEXNET train --preset photos --data "$PHOTOS" --out "$OUT/long/photos" \
            --budget "$((LONG - 30))s" --no-progress train.store_on_device=true &
    fi
else
    note "photos at a GPU budget: skipped, no data (set ALEXNET_PHOTOS to a prepared photo store)"
fi
wait
note "done; logs and results in $RESULTS/session.tgz"
pack

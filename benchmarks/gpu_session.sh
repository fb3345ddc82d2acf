#!/usr/bin/env bash
# The GPU benchmarks of issues 3 and 6 in one call on a lent GPU machine (run benchmarks/gpu_prepare.sh first):
#
#   bash benchmarks/gpu_session.sh          # writes logs and result archives to $OUT (default ./gpu-out)
#   TINY=1 PY=.venv/bin/python bash benchmarks/gpu_session.sh   # rehearsal on a CPU: tiny epochs and budgets
#
# 1. smoke: imports and one CUDA step; stops at once if they fail (device time is scarce).
# 2. models_bench.py --skip-train: train/inference images/s of every registry model, fp32 and bf16.
# 3. classify train --epochs 6 --name backbone: the detector's backbone (as the CPU detector benchmark's).
# 4. two chains side by side (GPU-resident data makes classify light on the CPU; the detector's loader needs it):
#    a. detect make-data/make-video (the CPU benchmark's scenes and clip), detect train --minutes M from the
#       backbone, detect video on the clip with ground truth;
#    b. classify train: the best CPU recipe (29 epochs, flip-erase-rotate), the default (no flags), vgg 40 epochs,
#       each then `classify eval --tta`; then models_bench.py with a short training budget per model.
# Timings of the two chains are taken while they share the machine; the logs say so.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-$PWD/gpu-out}
TINY=${TINY:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FASHIONKIT_RUNS=$PWD/runs-gpu FASHIONKIT_DATA=$PWD/.gpu/data
rm -rf "$FASHIONKIT_RUNS"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

if [ "$PY" = python3 ]; then  # the device machine: install this checkout and ultralytics without network
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
        || exit 3
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH PYTHONSAFEPATH=1  # not ./fashionkit: it lacks the mapped subpackages
fi
"$PY" -c "import polars" 2>/dev/null || export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD/.gpu/shim  # see its docstring
fk() { "$PY" -m fashionkit "$@"; }
DETECT_ONLY=${DETECT_ONLY:-0}  # 1: only the detector chain, from the backbone run unpacked in .gpu/prev (a rerun)

if [ "$TINY" = 1 ]; then
    BACKBONE="--epochs 1 --subset 2000"; BEST="--epochs 1 --subset 2000"; DEFAULT="--epochs 1 --subset 2000"
    VGG="--epochs 1 --subset 1000"; SCENES="--train 64 --val 16 --test 16"; SECONDS_=2; MINUTES=0.5
    BENCH="--budget-seconds 1 --max-epochs 1 --models mlp,vgg-small"; DEV=cpu; DEADLINE=${DEADLINE:-300}
else
    BACKBONE="--epochs 6"; BEST="--epochs 29"; DEFAULT=""; VGG="--epochs 40"; SCENES=""; SECONDS_=10
    MINUTES=${MINUTES:-4}; BENCH="--budget-seconds 8 --max-epochs 4"; DEV=cuda; DEADLINE=${DEADLINE:-480}
fi

stamp "smoke"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
"$PY" - <<EOF || { echo "SMOKE FAILED"; exit 4; }
import torch, torchvision, ultralytics, fashionkit.classify.train, fashionkit.detect.train
print("torch", torch.__version__, "torchvision", torchvision.__version__, "ultralytics", ultralytics.__version__)
if "$DEV" == "cuda":
    x = torch.randn(64, 1, 28, 28, device="cuda")
    from fashionkit.classify.models import create_model
    m = create_model("vgg-small").cuda()
    with torch.autocast("cuda", torch.bfloat16):
        m(x).float().sum().backward()
    torch.cuda.synchronize()
    print("cuda ok:", torch.cuda.get_device_name(), torch.cuda.is_bf16_supported())
EOF

if [ "$DETECT_ONLY" = 1 ]; then
    mkdir -p "$FASHIONKIT_RUNS/classify" && cp -r .gpu/prev/classify/backbone "$FASHIONKIT_RUNS/classify/" || exit 5
else
stamp "models_bench --skip-train"
timeout 120 "$PY" benchmarks/models_bench.py --skip-train --device "$DEV" --out "$OUT/models_gpu_throughput.json" \
    $( [ "$TINY" = 1 ] && echo --models mlp,vgg-small ) 2>&1 | tee "$OUT/models_throughput.log" | grep '^|'

stamp "classify backbone"
timeout 180 bash -c "time $PY -m fashionkit classify train $BACKBONE --device $DEV --name backbone" \
    > "$OUT/classify_backbone.log" 2>&1
tail -n 4 "$OUT/classify_backbone.log"
fi

detect_chain() {
    stamp "detect make-data"
    fk detect make-data --out "$FASHIONKIT_RUNS/detect/bench-data" --workers 12 $SCENES >/dev/null 2>&1 || echo "make-data failed"
    fk detect make-video "$FASHIONKIT_RUNS/detect/bench-video.mp4" --seconds $SECONDS_ >/dev/null 2>&1 || echo "make-video failed"
    stamp "detect train --minutes $MINUTES"
    fk detect train --from "$FASHIONKIT_RUNS/classify/backbone" \
        --data "$FASHIONKIT_RUNS/detect/bench-data" --stem 2 --minutes "$MINUTES" --epochs 100 --patience 0 --batch 64 \
        --workers 8 --cache --close-mosaic 10 --warmup-epochs 3 --no-plots --device "$DEV" --name gpu \
        --extra save_period=1
    stamp "detect video"
    fk detect video "$FASHIONKIT_RUNS/detect/bench-video.mp4" --weights "$FASHIONKIT_RUNS/detect/gpu" \
        --gt "$FASHIONKIT_RUNS/detect/bench-video.json" --imgsz 320 --device "$DEV" \
        --out "$FASHIONKIT_RUNS/detect/gpu/video" 2>&1 | tail -n 6
    stamp "detect chain done"
}

left() { echo $(( t0 + DEADLINE - $(date +%s) )); }  # seconds until the script's deadline

classify_chain() {
    for spec in "best-gpu:$BEST --augment flip-erase-rotate" \
                "vgg40-gpu:$VGG --model vgg --augment flip-erase-rotate --dropout 0.2" "default-gpu:$DEFAULT"; do
        name=${spec%%:*}; flags=${spec#*:}
        [ "$(left)" -gt 30 ] || { stamp "no time left for $name"; continue; }
        stamp "classify train $flags --name $name"
        timeout "$(left)" bash -c "time $PY -m fashionkit classify train $flags --device $DEV --name $name" 2>&1 \
            | tail -n 5
        fk classify eval "$FASHIONKIT_RUNS/classify/$name" --tta --device "$DEV" 2>&1 | grep -i "acc" | head -n 3
    done
    stamp "models_bench $BENCH"
    [ "$(left)" -gt 30 ] && timeout "$(left)" "$PY" benchmarks/models_bench.py $BENCH --device "$DEV" \
        --out "$OUT/models_gpu.json" 2>&1 | grep '^|'
    stamp "classify chain done"
}

detect_chain > "$OUT/detect.log" 2>&1 &
[ "$DETECT_ONLY" = 1 ] || classify_chain > "$OUT/classify.log" 2>&1 &
wait
stamp "both chains done"

# Back to the developer machine: logs, JSON, CSV, summaries and the weights worth keeping (not every epoch's).
skip=(--exclude='epoch*.pt' --exclude='last.pt' --exclude='*.mp4' --exclude='*.jpg' --exclude='*.png'
      --exclude='predictions.csv' --exclude='bench-data')
cd "$FASHIONKIT_RUNS" && tar czf "$OUT/classify.tgz" "${skip[@]}" classify; tar czf "$OUT/detect.tgz" "${skip[@]}" detect
ls -la "$OUT"
echo "=== detect.log (tail)"; grep -v "^\s*$" "$OUT/detect.log" | tail -n 30
[ "$DETECT_ONLY" = 1 ] || { echo "=== classify.log"; cat "$OUT/classify.log"; }

#!/bin/sh
# One command on a CUDA machine without network, run from the repository root with the kit of `make gpu-kit`:
#
#   sh scripts/gpu_run.sh KIT OUT          e.g. sh scripts/gpu_run.sh build/gpu-kit gpu-out
#
# 1. trains from the kit for MINUTES on the GPU, starting from the committed weights (the kit's wheels are
#    installed into KIT/site on first use);
# 2. copies the run's files to OUT: gpu.pt in parts of at most 15 MiB (gpu.pt.part00, ... and gpu.pt.sha256;
#    `python -m training.gpu_kit join OUT` rebuilds it), curve.csv, run.json;
# 3. checks the app on the GPU (fp16 parity, per-image times against the tolerances) into OUT/infer.json.
# Every line also goes to OUT/log.txt. At the defaults the whole command takes under 10 minutes: about one
# minute of setup, MINUTES of training, CHECK_SECONDS of checking. OUT then holds 8 files.
#
# Settings from the environment:
#   MINUTES        training minutes (default 5)
#   INIT           fp32 ONNX file to start from (default weights/mt2.fp32.onnx; empty: random weights)
#   CONTINUE       a checkpoint, or a folder holding gpu.pt, to start from instead of INIT
#   CHECK_SECONDS  the inference check's time budget (default 150)
#   RUN_ARGS       more options of `python -m training.gpu_kit run` (e.g. "--batch 48 --set teacher.ema_decay=0.999")
#   CHECK_ARGS     more options of `python -m training.gpu_kit check` (e.g. "--sides 1000,3000")
#   DEVICE         cuda (default), or cpu for a dry run of the whole command on any machine
#   PYTHON         the interpreter with torch (default python3)
set -u
KIT=${1:?usage: sh scripts/gpu_run.sh KIT OUT}
OUT=${2:?usage: sh scripts/gpu_run.sh KIT OUT}
MINUTES=${MINUTES:-5}
INIT=${INIT-weights/mt2.fp32.onnx}
CONTINUE=${CONTINUE:-}
CHECK_SECONDS=${CHECK_SECONDS:-150}
RUN_ARGS=${RUN_ARGS:-}
CHECK_ARGS=${CHECK_ARGS:-}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
RUN=$(mktemp -d)  # the run folder: its checkpoint is larger than one result file may be

if [ -n "$CONTINUE" ]; then
    set -- --continue-from "$CONTINUE"
elif [ -n "$INIT" ]; then
    set -- --init-onnx "$INIT"
else
    set --
fi

# The run stops itself at MINUTES; this guard (SIGTERM: the run still writes its checkpoint) covers a stuck setup.
guard() {
    if command -v timeout >/dev/null 2>&1; then
        limit=$("$PYTHON" -c "print(int(float('$MINUTES') * 60 + 180))")
        timeout -k 30 "$limit" "$@"
    else
        "$@"
    fi
}

main() {
    echo "== machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
    echo "== train: $MINUTES min"
    # shellcheck disable=SC2086  # RUN_ARGS holds several options
    guard "$PYTHON" -m training.gpu_kit run --kit "$KIT" --out "$RUN" --minutes "$MINUTES" --device "$DEVICE" "$@" \
        $RUN_ARGS
    train=$?
    echo "== results to $OUT"
    "$PYTHON" -m training.gpu_kit split --src "$RUN" --dest "$OUT"
    echo "== inference check"
    # shellcheck disable=SC2086  # CHECK_ARGS holds several options
    "$PYTHON" -m training.gpu_kit check --kit "$KIT" --weights weights --out "$OUT" --device "$DEVICE" \
        --budget-seconds "$CHECK_SECONDS" $CHECK_ARGS
    check=$?
    echo "== done: train exit $train, check exit $check"
    [ "$train" -eq 0 ] && [ "$check" -eq 0 ]
    echo $? > "$RUN/status"
}

main "$@" 2>&1 | tee "$OUT/log.txt"
status=$(cat "$RUN/status" 2>/dev/null || echo 1)
exit "$status"

#!/bin/sh
# Segment every image in $INPUT into <name>_label.tiff files in $OUTPUT (the challenge's entry point).
#   sh predict.sh                      from this folder (how the challenge runs it)
#   predict.sh                         from PATH, also through a symlink
#   INPUT=in OUTPUT=out sh predict.sh --device cpu --report out/timing.csv
# Environment: INPUT (default /workspace/inputs), OUTPUT (default /workspace/outputs), PYTHON (default
# python3), MT2_WEIGHTS (model file or folder; default the weights/ folder beside this script).
# Extra arguments go to `python -m app predict` after the defaults, so they override them (e.g. --budget none).
set -eu

INPUT=${INPUT:-/workspace/inputs}
OUTPUT=${OUTPUT:-/workspace/outputs}
if [ -z "${PYTHON:-}" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi
fi

# Find the real location of this script (following symlinks) to put the app on the module path.
script=$0
case $script in
    */*) ;;
    *) if [ -e "$script" ]; then script=./$script; else script=$(command -v -- "$script" || printf '%s' "$script"); fi ;;
esac
while [ -h "$script" ]; do
    link=$(readlink "$script")
    case $link in
        /*) script=$link ;;
        *) script=$(dirname "$script")/$link ;;
    esac
done
here=$(cd "$(dirname "$script")" && pwd -P)

PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
exec "$PYTHON" -m app predict --input "$INPUT" --output "$OUTPUT" --mode challenge "$@"

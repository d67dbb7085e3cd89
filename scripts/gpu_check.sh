#!/usr/bin/env bash
# The prepared check for a machine with an NVIDIA GPU (target: under 8 minutes on one H100).
#   1. the gpu-marked tests;  2. `ftplan gpus` and its calibration;
#   3. estimate vs measured peak memory for full / LoRA / QLoRA training steps (scripts/gpu_check.py).
# Results go to stdout, and to $OUT (gpu_check.md, calibration.json) when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 FTPLAN_CACHE_DIR="${OUT:-/tmp}/ftplan-cache"
status=0
python3 -m pytest -m gpu -q tests || status=1
python3 -m tui gpus || status=1
python3 -m tui gpus --calibrate || status=1
[ -n "${OUT:-}" ] && cp "$FTPLAN_CACHE_DIR/calibration.json" "$OUT/" 2>/dev/null
python3 scripts/gpu_check.py || status=1
exit $status

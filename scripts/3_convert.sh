#!/usr/bin/env bash
# Stage 3: LLaMA-Factory training data from the compressed CoTs, copied into $LLAMAFACTORY_DIR/data/
# and registered there (the project root by default, whose data/ the training recipes read).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"

BENCHMARK="${BENCHMARK:-gsm8k}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/Qwen2.5-7B-Instruct/${BENCHMARK}/}"
MODEL_SIZE="${MODEL_SIZE:-7b}"
MODEL_TYPE="${MODEL_TYPE:-qwen}"
METHOD="${METHOD:-llmlingua2}"
RATIOS="${RATIOS:-0.9 0.8 0.7 0.6 0.5}"
MIX="${MIX:-sample}"               # sample: one ratio per question (the original); all: every ratio
LLAMAFACTORY_DIR="${LLAMAFACTORY_DIR:-.}"

"$PYTHON" get_llamafactory_input.py --input-dir "${OUTPUT_DIR%/}/${MODEL_SIZE}" --model-size "$MODEL_SIZE" \
    --model-type "$MODEL_TYPE" --benchmark "$BENCHMARK" --method "$METHOD" --ratios $RATIOS --mix "$MIX" \
    --llamafactory-dir "$LLAMAFACTORY_DIR"

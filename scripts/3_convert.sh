#!/usr/bin/env bash
# Stage 3: LLaMA-Factory training data from the compressed CoTs, copied into $LLAMAFACTORY_DIR/data/
# and registered there (the project root by default, whose data/ the training recipes read).
# BENCHMARK, OUTPUT_DIR, MODEL_SIZE, MODEL_TYPE, METHOD, RATIOS: see compression_settings in scripts/common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"

compression_settings
MIX="${MIX:-sample}"               # sample: one ratio per question (the original); all: every ratio
LLAMAFACTORY_DIR="${LLAMAFACTORY_DIR:-.}"

"$PYTHON" get_llamafactory_input.py --input-dir "${OUTPUT_DIR%/}/${MODEL_SIZE}" --model-size "$MODEL_SIZE" \
    --model-type "$MODEL_TYPE" --benchmark "$BENCHMARK" --method "$METHOD" --ratios $RATIOS --mix "$MIX" \
    --llamafactory-dir "$LLAMAFACTORY_DIR"

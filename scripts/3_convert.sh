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
# a different file or entry of the same name already in $LLAMAFACTORY_DIR/data/ is refused unless
# OVERWRITE=1 (the replaced files are then backed up beside them)
OVERWRITE="$(yes_no OVERWRITE "${OVERWRITE:-0}")"

INPUT_DIR="$(layout_path model-dir --output-dir "$OUTPUT_DIR" --model-size "$MODEL_SIZE")"

# RATIO_LIST: RATIOS checked and split by compression_settings
"$PYTHON" get_llamafactory_input.py --input-dir "$INPUT_DIR" --model-size "$MODEL_SIZE" \
    --model-type "$MODEL_TYPE" --benchmark "$BENCHMARK" --method "$METHOD" --ratios "${RATIO_LIST[@]}" \
    --mix "$MIX" --llamafactory-dir "$LLAMAFACTORY_DIR" $([ "$OVERWRITE" = 1 ] && echo --overwrite)

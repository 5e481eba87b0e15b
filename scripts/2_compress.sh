#!/usr/bin/env bash
# Stage 2: compress the correct training CoTs at every ratio with METHOD = llmlingua2 | ner | cts | cts_authors.
# BENCHMARK, OUTPUT_DIR, MODEL_SIZE, MODEL_TYPE, METHOD, RATIOS: see compression_settings in scripts/common.sh
# (which also checks RATIOS and splits it into RATIO_LIST).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"

compression_settings
MAX_COT_TOKENS="${MAX_COT_TOKENS:-500}"
LLMLINGUA_PATH="${LLMLINGUA_PATH:-$(recorded LLMLINGUA_PATH)}"
LLMLINGUA_PATH="${LLMLINGUA_PATH:-models/llmlingua-2-xlm-roberta-large-meetingbank}"
REFERENCE_MODEL="${REFERENCE_MODEL:-}"   # CTS's causal reference model (empty: the model stage 1 ran)
INPUT_DIR="$(layout_path model-dir --output-dir "$OUTPUT_DIR" --model-size "$MODEL_SIZE")"

case "$METHOD" in
    llmlingua2|ner)
        script=$([ "$METHOD" = ner ] && echo llmlingua_ner.py || echo LLMLingua.py)
        "$PYTHON" "$script" --input-dir "$INPUT_DIR" --model-type "$MODEL_TYPE" --benchmark "$BENCHMARK" \
            --llmlingua-path "$LLMLINGUA_PATH" --ratios "${RATIO_LIST[@]}" --max-cot-tokens "$MAX_COT_TOKENS" ;;
    cts|cts_authors)
        predictions="$(layout_path stage1-predictions --output-dir "$OUTPUT_DIR" --model-size "$MODEL_SIZE")"
        args=(--input_data "$predictions" --model-type "$MODEL_TYPE" --ratios "${RATIO_LIST[@]}"
              --max-cot-tokens "$MAX_COT_TOKENS")
        [ -n "$REFERENCE_MODEL" ] && args+=(--reference_model "$REFERENCE_MODEL")
        [ "$METHOD" = cts_authors ] && args+=(--selection authors)
        "$PYTHON" CTS_data_get.py "${args[@]}" ;;
    *) echo "error: METHOD must be llmlingua2, ner, cts or cts_authors, not '$METHOD'" >&2; exit 2 ;;
esac

# Sourced by eval.sh and the stage scripts: which Python to run, and the model paths that
# download_models.py recorded in models/paths.env (a variable already set in the environment wins).
PATHS_ENV="${PATHS_ENV:-models/paths.env}"

# The value of KEY in $PATHS_ENV, or nothing.
recorded() {
    [ -f "$PATHS_ENV" ] || return 0
    (set +u; unset "$1"; . "$PATHS_ENV"; eval "printf '%s' \"\${$1:-}\"")
}

# The settings stages 2 and 3 share (eval.sh keeps its own at its top, as the original):
# which run's CoTs to compress, with which method, at which ratios.
compression_settings() {
    BENCHMARK="${BENCHMARK:-gsm8k}"
    OUTPUT_DIR="${OUTPUT_DIR:-outputs/Qwen2.5-7B-Instruct/${BENCHMARK}/}"
    MODEL_SIZE="${MODEL_SIZE:-7b}"
    MODEL_TYPE="${MODEL_TYPE:-auto}"  # auto: the prompt format stage 1 recorded
    METHOD="${METHOD:-llmlingua2}"   # llmlingua2 | ner | cts | cts_authors
    RATIOS="${RATIOS-0.9 0.8 0.7 0.6 0.5}"  # `-`, not `:-`: an empty RATIOS is a mistake, refused below
    ratio_list RATIOS "$RATIOS"
}

# The words of VALUE as the array RATIO_LIST, each a number, or a one-line error naming NAME (exit 2).
# `read -a` splits on blanks without expanding globs, so RATIOS='*' is refused instead of silently
# becoming the file names of the current folder, as an unquoted $RATIOS would. `-d ''` reads past
# newlines too (read then reports the missing NUL at the end as a failure, hence `|| true`).
ratio_list() {
    local ratio
    read -r -d '' -a RATIO_LIST <<< "$2" || true
    if [ "${#RATIO_LIST[@]}" = 0 ]; then
        echo "error: $1 is empty: give space-separated ratios such as \"0.9 0.5\", or unset it for the default" >&2
        exit 2
    fi
    for ratio in "${RATIO_LIST[@]}"; do
        if ! [[ "$ratio" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]]; then
            echo "error: $1 must be space-separated numbers such as \"0.9 0.5\", not '$2'" >&2
            exit 2
        fi
    done
}

# 1 or 0 for a yes/no setting given as 1/0, true/false or yes/no in any case; anything else is a
# one-line error naming NAME (exit 2), since a typo must not silently mean "no".
yes_no() {
    case "${2,,}" in
        1|true|yes) echo 1 ;;
        0|false|no) echo 0 ;;
        *) echo "error: $1 must be 1 or 0 (or true/false, yes/no), not '$2'" >&2; exit 2 ;;
    esac
}

# A path of the outputs tree, from the one module that defines it (tokenskip/core/layout.py), e.g.
#   layout_path stage1-predictions --output-dir D --model-size S;  layout_path compression-dir ... --method M
layout_path() {
    "$PYTHON" -m tokenskip.core.layout "$@"
}

# The toolkit's .venv runs every stage; generation (eval.sh) prefers .venv-vllm, the vLLM
# environment that `make setup-vllm` builds on GPU machines. PYTHON overrides both.
if [ -x .venv/bin/python ]; then TOOLKIT_PYTHON=.venv/bin/python; else TOOLKIT_PYTHON=python3; fi
if [ -x .venv-vllm/bin/python ]; then GENERATION_PYTHON=.venv-vllm/bin/python; else GENERATION_PYTHON=$TOOLKIT_PYTHON; fi

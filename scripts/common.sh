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
    MODEL_TYPE="${MODEL_TYPE:-qwen}"
    METHOD="${METHOD:-llmlingua2}"   # llmlingua2 | ner | cts
    RATIOS="${RATIOS:-0.9 0.8 0.7 0.6 0.5}"
}

# The toolkit's .venv runs every stage; generation (eval.sh) prefers .venv-vllm, the vLLM
# environment that `make setup-vllm` builds on GPU machines. PYTHON overrides both.
if [ -x .venv/bin/python ]; then TOOLKIT_PYTHON=.venv/bin/python; else TOOLKIT_PYTHON=python3; fi
if [ -x .venv-vllm/bin/python ]; then GENERATION_PYTHON=.venv-vllm/bin/python; else GENERATION_PYTHON=$TOOLKIT_PYTHON; fi

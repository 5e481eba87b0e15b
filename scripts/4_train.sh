#!/usr/bin/env bash
# Stage 4: LoRA SFT with LLaMA-Factory. CONFIG picks the recipe; anything in TRAIN_OVERRIDES
# ("key=value key=value") overrides it, e.g. TRAIN_OVERRIDES="dataset=mydataset_compressed_gsm8k_cts_qwen_7B".
#
# Several GPUs or nodes (LLaMA-Factory's torchrun launcher reads these from the environment):
#   FORCE_TORCHRUN=1 NPROC_PER_NODE=8 DEEPSPEED=z3 scripts/4_train.sh
#   FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=0|1 MASTER_ADDR=node0 MASTER_PORT=29500 NPROC_PER_NODE=8 scripts/4_train.sh
# The gradient accumulation is set so that per-device x accumulation x world size stays the recipe's
# global batch (8 for TokenSkip's); GLOBAL_BATCH=N changes it. DEEPSPEED=z2|z3 adds a ZeRO config.
# DRY_RUN=1 prints the plan and the command only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"

CONFIG="${CONFIG:-configs/examples/train_lora/myllama3_lora_sft_compressed_gsm8k_llmlingua2_qwen_7B.yaml}"
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"
LLAMAFACTORY_CLI="${LLAMAFACTORY_CLI:-$(dirname "$PYTHON")/llamafactory-cli}"
[ -x "$LLAMAFACTORY_CLI" ] || LLAMAFACTORY_CLI=llamafactory-cli

args=(--llamafactory-cli "$LLAMAFACTORY_CLI")
[ -n "${GLOBAL_BATCH:-}" ] && args+=(--global-batch "$GLOBAL_BATCH")
[ -n "${DEEPSPEED:-}" ] && args+=(--deepspeed "$DEEPSPEED")
[ -n "${DRY_RUN:-}" ] && [ "${DRY_RUN}" != 0 ] && args+=(--dry-run)
# shellcheck disable=SC2086  # TRAIN_OVERRIDES is a list of key=value words
"$PYTHON" -m tokenskip.stages.train "${args[@]}" "$CONFIG" $TRAIN_OVERRIDES

#!/usr/bin/env bash
# Stage 4: LoRA SFT with LLaMA-Factory. CONFIG picks the recipe; anything in TRAIN_OVERRIDES
# ("key=value key=value") overrides it, e.g. TRAIN_OVERRIDES="dataset=mydataset_compressed_gsm8k_cts_qwen_7B".
# Multi-GPU with DeepSpeed: FORCE_TORCHRUN=1 CONFIG=configs/examples/train_lora/..._ds_z3.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
PYTHON="${PYTHON:-$TOOLKIT_PYTHON}"

CONFIG="${CONFIG:-configs/examples/train_lora/myllama3_lora_sft_compressed_gsm8k_llmlingua2_qwen_7B.yaml}"
TRAIN_OVERRIDES="${TRAIN_OVERRIDES:-}"
LLAMAFACTORY_CLI="${LLAMAFACTORY_CLI:-$(dirname "$PYTHON")/llamafactory-cli}"
[ -x "$LLAMAFACTORY_CLI" ] || LLAMAFACTORY_CLI=llamafactory-cli

"$LLAMAFACTORY_CLI" train "$CONFIG" $TRAIN_OVERRIDES

#!/usr/bin/env bash
# Stage 1: the base model answers the training questions; its graded CoTs land in
# $OUTPUT_DIR/$MODEL_SIZE/Original/train/samples/. Same settings as eval.sh (override from the environment).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_TYPE=train USE_ADAPTER=0 RATIOS=1.0 exec bash eval.sh

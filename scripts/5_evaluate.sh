#!/usr/bin/env bash
# Stage 5: the trained adapter on the test split at every ratio (and at 1.0), via eval.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# `-`, not `:-`: an empty RATIOS reaches eval.sh, which refuses it
RATIOS="${RATIOS-1.0 0.9 0.8 0.7 0.6 0.5}" DATA_TYPE=test exec bash eval.sh

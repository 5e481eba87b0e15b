#!/usr/bin/env python
"""Stage 2 of TokenSkip: compress the model's correct CoTs at several ratios. See `python llmlingua_ner.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.lingua_stage:ner_main")

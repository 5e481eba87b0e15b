#!/usr/bin/env python
"""Stage 2 of TokenSkip: compress the model's correct CoTs at several ratios. See `python llmlingua_ner.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.lingua_stage import ner_main

if __name__ == "__main__":
    run_cli(ner_main)

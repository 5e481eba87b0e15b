#!/usr/bin/env python
"""Stage 2 of TokenSkip: compress the model's correct CoTs at several ratios. See `python LLMLingua.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.lingua_stage import llmlingua_main

if __name__ == "__main__":
    run_cli(llmlingua_main)

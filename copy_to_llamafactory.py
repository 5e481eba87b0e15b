#!/usr/bin/env python
"""Stage 3 of TokenSkip (LLaMA-Factory data). See `python copy_to_llamafactory.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.llamafactory import copy_main

if __name__ == "__main__":
    run_cli(copy_main)

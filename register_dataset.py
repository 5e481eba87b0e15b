#!/usr/bin/env python
"""Stage 3 of TokenSkip (LLaMA-Factory data). See `python register_dataset.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.llamafactory import register_main

if __name__ == "__main__":
    run_cli(register_main)

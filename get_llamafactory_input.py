#!/usr/bin/env python
"""Stage 3 of TokenSkip (LLaMA-Factory data). See `python get_llamafactory_input.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.llamafactory import main

if __name__ == "__main__":
    run_cli(main)

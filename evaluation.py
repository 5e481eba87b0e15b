#!/usr/bin/env python
"""Stages 1 and 5 of TokenSkip: generate and grade CoT answers. See `python evaluation.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.evaluate import main

if __name__ == "__main__":
    run_cli(main)

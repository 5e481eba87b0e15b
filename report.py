#!/usr/bin/env python
"""Results of any run: tables and the accuracy-vs-CoT-tokens plot. See `python report.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.report import main

if __name__ == "__main__":
    run_cli(main)

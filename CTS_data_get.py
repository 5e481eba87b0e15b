#!/usr/bin/env python
"""Stage 2 with Conditional Token Selection (CTS): compress correct CoTs. See `python CTS_data_get.py --help`."""

from tokenskip.cli import run_cli
from tokenskip.cts_stage import main

if __name__ == "__main__":
    run_cli(main)

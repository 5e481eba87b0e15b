#!/usr/bin/env python
"""Stage 2 with Conditional Token Selection (CTS): compress correct CoTs. See `python CTS_data_get.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.cts_stage:main")

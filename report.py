#!/usr/bin/env python
"""Results of any run: tables and the accuracy-vs-CoT-tokens plot. See `python report.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.report:main")

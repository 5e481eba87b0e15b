#!/usr/bin/env python
"""Stages 1 and 5 of TokenSkip: generate and grade CoT answers. See `python evaluation.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.evaluate:main")

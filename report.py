#!/usr/bin/env python
"""Results of any run: tables and the accuracy-vs-CoT-tokens plot. See `python report.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.report import main

        main()

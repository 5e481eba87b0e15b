#!/usr/bin/env python
"""Stages 1 and 5 of TokenSkip: generate and grade CoT answers. See `python evaluation.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.evaluate import main

        main()

#!/usr/bin/env python
"""Stage 2 of TokenSkip: compress the model's correct CoTs at several ratios. See `python LLMLingua.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.lingua import llmlingua_main

        llmlingua_main()

#!/usr/bin/env python
"""Stage 3 of TokenSkip (LLaMA-Factory data). See `python register_dataset.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.llamafactory import register_main

        register_main()

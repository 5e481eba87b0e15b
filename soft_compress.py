#!/usr/bin/env python
"""Hybrid stage 2b: soft compression of CoTs (OSCAR-style). See `python soft_compress.py --help`."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.soft import main

        main()

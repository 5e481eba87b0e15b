#!/usr/bin/env python
"""Fetch base models, LLMLingua-2 and adapters (or the embedded offline default). See --help."""

from tokenskip.cli import run_cli
from tokenskip.download import main

if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python
"""Fetch models, adapters and datasets from the Hugging Face hub, or the embedded offline model."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    # the stage is imported inside run_cli, so that a missing package is one line, not a traceback
    run_cli("tokenskip.download:main")

#!/usr/bin/env python
"""Fetch models, adapters and datasets from the Hugging Face hub, or the embedded offline model."""

from tokenskip.cli import run_cli
from tokenskip.download import main

if __name__ == "__main__":
    run_cli(main)

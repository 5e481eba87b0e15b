#!/usr/bin/env python
"""Fetch models, adapters and datasets from the Hugging Face hub, or the embedded offline model."""

from tokenskip.core.cli import user_errors

if __name__ == "__main__":
    with user_errors():  # the stage is imported inside: a missing package is one line, not a traceback
        from tokenskip.stages.download import main

        main()

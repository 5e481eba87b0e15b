#!/usr/bin/env python
"""Hybrid stage 2b: soft compression of CoTs (OSCAR-style). See `python soft_compress.py --help`."""

from tokenskip.cli import run_cli

if __name__ == "__main__":
    run_cli("tokenskip.soft_stage:main")

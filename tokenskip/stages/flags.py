"""Flags that several stages take, declared once: their names, choices and defaults. Each stage
says in its own words what the flag means for it (the help), nothing else. Not a stage itself."""

from __future__ import annotations

import argparse

from tokenskip.prompting.prompts import MODEL_TYPES

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_HELP = "auto, cpu, cuda, cuda:1..."


def add_model_type(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="auto", help=help)


def add_device(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, dtype_help: str,
               device_help: str = DEVICE_HELP) -> None:
    parser.add_argument("--device", default="auto", help=device_help)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help=dtype_help)

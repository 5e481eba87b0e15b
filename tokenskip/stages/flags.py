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


def add_shard_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, unit: str) -> None:
    """--num-shards, --shard-index and --merge-shards, for a stage whose work splits by `unit`."""
    parser.add_argument("--num-shards", type=int, default=1, metavar="K",
                        help=f"split the job into K shards by {unit}; run each with --shard-index (any launcher: "
                             "a SLURM array, torchrun, a Kubernetes job), then once more with --merge-shards")
    parser.add_argument("--shard-index", type=int, default=None, metavar="I",
                        help="run shard I (0 .. K-1) alone; it writes into {run folder}/shards/I-of-K/ and can be "
                             "rerun alone (it resumes)")
    parser.add_argument("--merge-shards", action="store_true",
                        help="merge the K finished shards into the run folder's files, exactly as the unsharded run "
                             "writes them (the same flags as the shards, without --shard-index)")


SHARD_FLAGS = ("num_shards", "shard_index", "merge_shards")


def recorded_call(args: argparse.Namespace) -> dict:
    """A call's flags as its shards record them: every shard and the merge must give the same ones
    (the shard flags aside)."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in SHARD_FLAGS}

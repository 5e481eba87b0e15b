"""Shards: one job split over K processes started by any launcher (a SLURM array, torchrun, a
Kubernetes job, a Ray task, or evaluation.py's own --data-parallel-size), then merged.

The rule, the same for every stage that shards:
- shard i of K works on its share of the items (which items is the stage's choice, made from the
  whole job so that every shard sees the same plan), and writes only inside its own folder,
  `{the run's folder}/shards/{i}-of-{K}/`, under that folder's lock: shards never share a file;
- a shard is finished when its folder holds its finish file (written last, atomically); it can be
  killed and rerun alone, and resumes where the stage supports resuming;
- the merge, run once all K have finished, holds the run folder's lock and every shard's, reads the
  shards' records, puts them back in the job's order and writes the run folder's files exactly as
  the unsharded run writes them. A shard missing or unfinished is named in a one-line error.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from tokenskip.core import layout
from tokenskip.core.errors import UsageError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def folder(self, run_folder: Path) -> Path:
        return layout.shard_dir(run_folder, self.index, self.count)

    def take(self, items: list) -> list:
        """Items index, index + K, index + 2K...: shares that differ by one item at most."""
        return items[self.index::self.count]

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


@dataclass(frozen=True)
class ShardPlan:
    """What a call's shard flags ask for: the whole job, one shard of it, or the merge of K shards."""

    count: int = 1
    index: int | None = None
    merge: bool = False

    @property
    def shard(self) -> Shard | None:
        return Shard(self.index, self.count) if self.index is not None else None

    def shards(self) -> list[Shard]:
        return [Shard(i, self.count) for i in range(self.count)]


def shard_plan(args: argparse.Namespace) -> ShardPlan:
    """The checked plan of --num-shards / --shard-index / --merge-shards."""
    count, index, merge = args.num_shards, args.shard_index, args.merge_shards
    if count < 1:
        raise UsageError(f"--num-shards must be 1 or more, got {count}")
    if index is not None and merge:
        raise UsageError("--merge-shards merges every shard: drop --shard-index")
    if index is not None and not 0 <= index < count:
        raise UsageError(f"--shard-index must be in 0..{count - 1} for --num-shards {count}, got {index}")
    if count > 1 and index is None and not merge:
        raise UsageError(f"--num-shards {count}: run each shard with --shard-index 0..{count - 1}, then merge "
                         "with --merge-shards")
    if merge and count < 2:
        raise UsageError("--merge-shards needs the --num-shards K the shards ran with (2 or more)")
    return ShardPlan(count=count, index=index, merge=merge)


def finished_shards(run_folder: Path, count: int, finish_file: str, rerun_hint: str) -> list[Path]:
    """The K shard folders of `run_folder`, each checked to be finished; else a one-line error
    naming the first one that is missing or unfinished, and how to rerun it."""
    folders = [Shard(i, count).folder(run_folder) for i in range(count)]
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            raise UsageError(f"shard {i} of {count} is missing ({folder} does not exist): run it with "
                             f"{rerun_hint} --shard-index {i}, then merge again")
        if not (folder / finish_file).is_file():
            raise UsageError(f"shard {i} of {count} is unfinished ({folder} has no {finish_file}): rerun it with "
                             f"{rerun_hint} --shard-index {i} (it resumes), then merge again")
    return folders

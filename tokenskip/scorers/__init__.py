"""Importance scorers: which chain-of-thought tokens to keep when compressing a CoT.

A scorer works in two steps so that it keeps no state between calls: `score` reads each CoT once
(the one model pass) and returns a per-CoT object holding everything selection needs; `select`
turns one such object into the compressed CoT at one ratio γ. Five ratios thus cost one model
pass, not five. `compress` chains the two for callers that want the texts only.

A scorer is one `Scorer` subclass in a module of this package, named in SCORERS below. The table
is imported lazily, as tokenskip/grading.py's GRADERS are named, so that naming a method costs no
heavy import (scorer modules keep torch, transformers and spaCy inside functions) and no import
order can hide a scorer.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from tokenskip import layout
from tokenskip.errors import UsageError

# --method name -> "module:Class"
SCORERS = {
    "llmlingua2": "tokenskip.scorers.llmlingua2:LLMLingua2Scorer",
    "ner": "tokenskip.scorers.ner:NERScorer",
    "cts": "tokenskip.scorers.cts:CTSScorer",
    "cts_authors": "tokenskip.scorers.cts_authors:AuthorsCTSScorer",
}


@dataclass(frozen=True)
class CoT:
    """One chain of thought to compress, with what some scorers condition on."""

    text: str
    question: str = ""
    answer: str = ""


class Scorer(ABC):
    name: ClassVar[str]  # the --method name, a key of SCORERS
    output_folder: ClassVar[str]  # where the stage writes its ratio files: layout.COMPRESSION_FOLDERS[name]
    script: ClassVar[str]  # the top-level stage script that runs it
    file_stem: ClassVar[str] = layout.RATIO_FILE_STEM  # ratio files are {file_stem}_{γ}.jsonl

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.output_folder = layout.COMPRESSION_FOLDERS[cls.name]

    @abstractmethod
    def score(self, cots: Sequence[CoT]) -> list[Any]:
        """Read every CoT once; each result holds what `select` needs at any ratio."""

    @abstractmethod
    def select(self, scored: Any, ratio: float) -> str:
        """The compressed text of one scored CoT at `ratio` (the share of the CoT to keep), a ratio
        that `check_ratios` accepted."""

    def check_ratios(self, ratios: Sequence[float]) -> None:
        """Refuse, with a UsageError, any ratio this scorer cannot compress to: by default, γ outside (0, 1)."""
        for ratio in ratios:
            if not 0.0 < ratio < 1.0:
                raise UsageError(f"compression ratio must be between 0 and 1 (exclusive), got {ratio}")

    def compress(self, cots: Sequence[CoT], ratios: Sequence[float]) -> list[dict[float, str]]:
        """For each CoT, its compressed text at every ratio, from one `score` of each CoT."""
        self.check_ratios(ratios)
        return [{ratio: self.select(scored, ratio) for ratio in ratios} for scored in self.score(cots)]

    def ratio_report(self, cots: Sequence[CoT], compressed: Sequence[dict[float, str]],
                     scored: Sequence[Any] | None = None) -> dict[float, dict]:
        """Scorer-specific numbers per ratio for the stage's summary (none by default), from the CoTs,
        their compressed texts and, for scorers whose numbers need them, their `score` results."""
        return {}


def scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS:
        raise UsageError(f"unknown compression method {name!r}; choose from {', '.join(sorted(SCORERS))}")
    module, _, class_name = SCORERS[name].partition(":")
    return getattr(importlib.import_module(module), class_name)

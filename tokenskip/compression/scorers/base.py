"""What every importance scorer is: a `Scorer` subclass that reads CoTs once and selects at any γ."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from tokenskip.core import layout
from tokenskip.core.ratios import check_ratio


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
            check_ratio(ratio)

    def compress(self, cots: Sequence[CoT], ratios: Sequence[float]) -> list[dict[float, str]]:
        """For each CoT, its compressed text at every ratio, from one `score` of each CoT."""
        self.check_ratios(ratios)
        return [{ratio: self.select(scored, ratio) for ratio in ratios} for scored in self.score(cots)]

    # The stage summary's scorer-specific numbers per ratio are made in two steps, so that a sharded
    # stage 2 merges to the same summary: each CoT's additive counts (`cot_counts`), summed over the
    # CoTs in order (`add_counts`), then turned into the figures (`report_from_counts`).
    report_needs_scores: ClassVar[bool] = False  # whether `cot_counts` reads the CoT's `score` result

    def cot_counts(self, cot: CoT, compressed: dict[float, str], scored: Any) -> dict[float, dict[str, float]]:
        """One CoT's additive numbers per ratio behind the summary's figures (none by default)."""
        return {}

    @classmethod
    def report_from_counts(cls, totals: dict[float, dict[str, float]]) -> dict[float, dict]:
        """The summary's figures per ratio, from the counts of every CoT summed (none by default)."""
        return {}

    def ratio_report(self, cots: Sequence[CoT], compressed: Sequence[dict[float, str]],
                     scored: Sequence[Any] | None = None) -> dict[float, dict]:
        """The figures for these CoTs and their compressed texts; `scored` is `score(cots)` when the
        caller has it (scorers whose counts need it score the CoTs again without it)."""
        if scored is None:
            scored = self.score(cots) if self.report_needs_scores else [None] * len(cots)
        totals: dict[float, dict[str, float]] = {}
        for cot, texts, one in zip(cots, compressed, scored):
            add_counts(totals, self.cot_counts(cot, texts, one))
        return self.report_from_counts(totals)


def add_counts(totals: dict[float, dict[str, float]], counts: dict[float, dict[str, float]]) -> None:
    """Add one CoT's counts into `totals` (in place)."""
    for ratio, values in counts.items():
        bucket = totals.setdefault(ratio, {})
        for key, value in values.items():
            bucket[key] = bucket.get(key, 0) + value

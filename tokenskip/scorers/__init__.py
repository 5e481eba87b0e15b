"""Importance scorers: which chain-of-thought tokens to keep when compressing a CoT.

Every scorer scores each CoT once and derives the compressed CoT for every ratio γ from those
same scores, so five ratios cost one model pass, not five. A scorer is one module in this
package holding one `Scorer` subclass decorated with `@register`; modules are discovered at
first use, so adding a scorer touches nothing else. Modules keep heavy imports (torch,
transformers, spaCy) inside functions so that discovery stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

from tokenskip.errors import UsageError


@dataclass(frozen=True)
class CoT:
    """One chain of thought to compress, with what some scorers condition on."""

    text: str
    question: str = ""
    answer: str = ""


class Scorer(ABC):
    name: ClassVar[str]  # the --method name
    output_folder: ClassVar[str]  # where the stage writes its ratio files, next to Original/
    script: ClassVar[str]  # the top-level stage script that runs it
    file_stem: ClassVar[str] = "train_outputs_compressed_ratio"  # ratio files are {file_stem}_{γ}.jsonl

    @abstractmethod
    def compress(self, cots: Sequence[CoT], ratios: Sequence[float]) -> list[dict[float, str]]:
        """For each CoT, its compressed text at every ratio (the share of the CoT to keep)."""

    def ratio_report(self, cots: Sequence[CoT], compressed: Sequence[dict[float, str]]) -> dict[float, dict]:
        """Scorer-specific numbers per ratio for the stage's summary (none by default)."""
        return {}


_REGISTRY: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def scorer_class(name: str) -> type[Scorer]:
    if not _REGISTRY:
        _discover()
    if name not in _REGISTRY:
        raise UsageError(f"unknown compression method {name!r}; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]

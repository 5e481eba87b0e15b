"""Importance scorers: which chain-of-thought tokens to keep when compressing a CoT.

A scorer works in two steps so that it keeps no state between calls: `score` reads each CoT once
(the one model pass) and returns a per-CoT object holding everything selection needs; `select`
turns one such object into the compressed CoT at one ratio γ. Five ratios thus cost one model
pass, not five. `compress` chains the two for callers that want the texts only.

A scorer is one `Scorer` subclass (base.py) in a module of this package, listed in SCORERS below:
a table built from imports, so that a reader and a tool see every scorer. Importing them is cheap,
as scorer modules keep torch, transformers and spaCy inside functions.
"""

from __future__ import annotations

from tokenskip.compression.scorers.base import CoT, Scorer
from tokenskip.compression.scorers.cts import CTSScorer
from tokenskip.compression.scorers.cts_authors import AuthorsCTSScorer
from tokenskip.compression.scorers.llmlingua2 import LLMLingua2Scorer
from tokenskip.compression.scorers.ner import NERScorer
from tokenskip.core.errors import UsageError

# --method name -> its scorer
SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (LLMLingua2Scorer, NERScorer, CTSScorer, AuthorsCTSScorer)}

__all__ = ["SCORERS", "CoT", "Scorer", "scorer_class"]


def scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS:
        raise UsageError(f"unknown compression method {name!r}; choose from {', '.join(sorted(SCORERS))}")
    return SCORERS[name]

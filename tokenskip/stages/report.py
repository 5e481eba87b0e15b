"""Results of any run: every test-split `metrics.json` under a folder, as tables and plots.

Rows are grouped by the folder that holds a model's method folders (`{model}/{benchmark}/{size}/`
in the original layout) and compared with that group's original run: accuracy change, actual
compression ratio (mean CoT tokens / the original's) next to the target γ, and speed-up.
A second table per group shows how well each method keeps to γ, which is what TokenSkip is for:
the ratio on the same questions against the original run and against the method's own γ = 1.0 run
(which takes out what fine-tuning alone does to length), the same on the questions both runs got
right, median CoT and capped outputs, and stage 2's training-data ratio beside the adapter's, so
that target → training data → model output reads in one row.
Metrics written by older scripts, which carry only `accuracy`, `avg_cot_length` and
`sample_latency`, are placed by their path (`Original/`, `TokenSkip/<γ>/`, ...), read back by
`tokenskip.core.layout.place`. Runs that were started but never finished (settings, no metrics.json)
are listed after the tables, so that a missing row is never a silent one.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.settings import METRICS_KIND as SOFT_METRICS
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import atomic_writer, read_json, read_jsonl
from tokenskip.core.layout import (
    COMPRESSION_FOLDERS,
    COMPRESSION_SUMMARY,
    METRICS,
    PREDICTIONS,
    RUN_SETTINGS,
    compression_dir,
    place,
)
from tokenskip.core.ratios import DEFAULT_RATIOS, ratio_tag
from tokenskip.data.benchmarks import BENCHMARKS, DATASET_DIRS

BENCHMARK_NAMES = (*BENCHMARKS, *DATASET_DIRS.values())  # as output folders name them

METHOD_NAMES = {"original": "Original", "tokenskip": "TokenSkip", "ratio-tag": "Base model + γ tag",
                "truncation": "Truncation", "prompt": "Prompt-based"}  # also the order of the rows
POINTS_KEY = "tokenskip:points"  # PNG text chunk: how many points the plot holds
ADHERENCE_TARGETS = DEFAULT_RATIOS  # the paper's γ, over which the mean |actual − γ| is taken
# the ratio an adherence summary uses, best first: against the method's own γ = 1.0 run, which
# takes out what fine-tuning alone does to length; else against the original run on the same
# questions; else, for runs without predictions.jsonl, the metrics' means over all questions
BASES = {"self": "vs γ=1.0, same questions", "original": "vs original, same questions",
         "original-means": "vs original, all questions"}


@dataclass
class Row:
    method: str  # the run's label
    ratio: float
    accuracy: float  # percent
    accuracy_change: float | None
    cot_tokens: float
    actual_ratio: float | None
    latency: float | None  # seconds per question on `latency_basis`
    speedup: float | None  # the original's latency / this run's, both on `latency_basis`
    n_samples: int
    path: str
    # "request": metrics' request_latency mean (this run and the original both have it), else
    # "batch": sample_latency, batch wall time / n
    latency_basis: str | None = None
    sample_latency: float | None = None
    request_latency: dict | None = None  # {"mean", "p50", "p90", "n"} as metrics.json has it
    median_cot_tokens: float | None = None
    n_capped: int | None = None  # outputs that stopped at the token cap
    # mean CoT tokens / the reference run's, on the questions both runs answered (ids in both
    # predictions.jsonl); "self" is this method's γ = 1.0 run; "_both_correct" only on the
    # questions both runs got right, so that wrong answers' rambling does not move the ratio
    ratio_vs_original: float | None = None
    ratio_vs_self: float | None = None
    ratio_vs_original_both_correct: float | None = None
    ratio_vs_self_both_correct: float | None = None
    n_both_correct_original: int | None = None
    n_both_correct_self: int | None = None
    # adapter rows: stage 2's mean actual ratio of the training CoTs at this γ, per compression method
    train_data_ratios: dict[str, float] | None = None
    # reasoning models: metrics.json's "thinking" (thinking and answer tokens apart, outputs cut off in <think>)
    thinking: dict | None = None


@dataclass
class Unfinished:
    """A run evaluation.py started and did not finish (interrupted, or still going): no metrics.json yet."""

    path: str  # its samples folder, relative to the report's root
    predictions: int  # answers written so far


@dataclass
class Adherence:
    """How well one method (a row label) keeps to γ."""

    method: str
    basis: str | None  # a BASES key: the ratio used below; None when no run has one
    actual: dict[str, float]  # γ → actual ratio on `basis`, for every γ that has one
    targets: list[float]  # the ADHERENCE_TARGETS with an actual ratio
    mean_abs_error: float | None  # mean |actual − γ| over `targets`
    # whether mean CoT tokens never grow as γ decreases, over all of the method's γ (1.0 included);
    # None with fewer than two γ. An inversion is a pair of γ whose smaller one has the longer CoT.
    monotonic: bool | None
    inversions: int
    pairs: int


@dataclass
class TrainingRatios:
    """Stage 2's compression_summary.json: the ratio the training CoTs really have at each γ."""

    method: str  # the compression method (llmlingua2, ner, cts)
    path: str
    ratios: dict[str, float]  # γ → mean actual ratio


@dataclass
class Table:
    title: str
    benchmark: str
    rows: list[Row]
    original: str | None  # the label of the row the others are compared with
    unfinished: list[Unfinished] = field(default_factory=list)  # this group's runs that are not rows yet
    adherence: list[Adherence] = field(default_factory=list)  # one per method but the original
    training_ratios: list[TrainingRatios] = field(default_factory=list)
    soft: dict | None = None  # a soft-compression evaluation's metrics.json (soft_compress.py evaluate)


@dataclass
class Run:
    group: Path
    method: str
    label: str
    ratio: float
    metrics: dict
    path: Path


def describe(metrics_path: Path) -> Run | None:
    """Where a run belongs (its group folder), its method and γ from its metrics and its place in the layout; None for
    training-split runs, which collect CoTs rather than measure."""
    metrics = read_json(metrics_path)
    where = place(metrics_path)
    if metrics.get("data_type") == "train" or (where is not None and where.data_type == "train"):
        return None
    method = metrics.get("method") or (where.method if where else None)
    if method is None:
        return None
    if "compression_ratio" in metrics:
        ratio = float(metrics["compression_ratio"])
    elif where is not None:
        ratio = where.ratio
    elif method == "original":
        ratio = 1.0
    else:
        return None  # an old run outside the layout says nothing of its γ
    group = where.group if where is not None else metrics_path.parent.parent
    label = metrics.get("label") or METHOD_NAMES.get(method, method)
    return Run(group, method, label, ratio, metrics, metrics_path)


def unfinished_runs(root: Path) -> dict[Path, list[Unfinished]]:
    """Per group, the test-split runs with settings (run.json) and no metrics.json: evaluation.py
    writes metrics.json only once every question is answered, and a resumed run must keep its
    settings, so a metrics.json always means a finished run and its absence an unfinished one."""
    found: dict[Path, list[Unfinished]] = {}
    for settings in sorted(root.rglob(RUN_SETTINGS)):
        folder = settings.parent
        if (folder / METRICS).exists():
            continue
        where = place(folder / METRICS)
        data_type = _read_or_empty(settings).get("data_type") or (where.data_type if where else None)
        if data_type == "train":  # stage 1's CoT collection: never a row of the tables
            continue
        group = where.group if where is not None else folder.parent
        found.setdefault(group, []).append(
            Unfinished(str(folder.relative_to(root)), _count_records(folder / PREDICTIONS)))
    return found


def _read_or_empty(path: Path) -> dict:
    try:
        return read_json(path)
    except (UsageError, OSError):  # a settings file torn by a crash: still an unfinished run
        return {}


def _count_records(path: Path) -> int:
    """The complete JSON lines of a predictions file (a kill can leave the last one torn)."""
    if not path.is_file():
        return 0
    count = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                json.loads(line)
                count += 1
            except ValueError:
                pass
    return count


def _listed(runs: Sequence[Unfinished]) -> str:
    return ", ".join(f"{run.path} ({run.predictions} predictions)" for run in runs)


def collect(root: Path) -> list[Table]:
    files = sorted(root.rglob(METRICS))
    unfinished = unfinished_runs(root)
    if not files:
        waiting = [run for runs in unfinished.values() for run in runs]
        if waiting:
            raise UsageError(f"no metrics.json under {root}, only unfinished runs: {_listed(waiting)}; "
                             "rerun their evaluation to finish them (it resumes)")
        raise UsageError(f"no metrics.json under {root}: run evaluation.py first (or point at its --output-dir)")
    groups: dict[Path, list[Run]] = {}
    soft_tables = []
    for path in files:
        metrics = read_json(path)
        if metrics.get("stage") == SOFT_METRICS:
            soft_tables.append(soft_table(path, metrics, root))
            continue
        run = describe(path)
        if run:
            groups.setdefault(run.group, []).append(run)
    if not groups and soft_tables:
        return soft_tables
    if not groups:
        raise UsageError(f"the runs under {root} are all on the training split; evaluate on --data-type test")
    tables = {group: make_table(group, runs, root) for group, runs in groups.items()}
    for group, runs in unfinished.items():
        # a group whose runs are all unfinished gets an empty table, which carries them in the json
        table = tables.get(group) or Table(_title(group, root, _benchmark_of(group)), _benchmark_of(group), [], None)
        table.unfinished = runs
        tables[group] = table
    return [tables[group] for group in sorted(tables)] + soft_tables


def soft_table(path: Path, metrics: dict, root: Path) -> Table:
    """A soft-compression evaluation (its conditions are the table's content, not layout rows)."""
    try:
        where = path.parent.relative_to(root)
    except ValueError:
        where = path.parent
    where = where if str(where) != "." else Path(root.resolve().name)
    return Table(f"Soft compression: {where}", "", [], None, soft=metrics)


def soft_markdown(metrics: dict) -> list[str]:
    settings = metrics.get("settings", {})
    lines = ["| condition | accuracy | n | context positions | prompt positions | compress ms | prefill ms "
             "| latency ms |", "|---|---|---|---|---|---|---|---|"]
    for row in metrics["conditions"].values():
        lines.append(
            f"| {row['name']} | {100 * row['accuracy']:.1f}% | {row['n']} | {row['context_positions']:.1f} | "
            f"{row['prompt_positions']:.1f} | {_fmt(row.get('compress_ms'), '{:.1f}')} | "
            f"{_fmt(row.get('prefill_ms'), '{:.1f}')} | {_fmt(row.get('latency_ms'), '{:.1f}')} |")
    n_probe = next(iter(metrics["conditions"].values()), {}).get("n_probe")
    lines += ["", f"Generator {settings.get('base_model', '?')}; compressor = its first "
              f"{settings.get('n_layers', '?')} layers, {settings.get('mem_tokens', '?')} embeddings per "
              f"{settings.get('block_size', '?')} CoT tokens. Prefill = one forward pass over the request's input; "
              f"latency = compression + generation, one request at a time ({_fmt(n_probe, '{}')} requests per "
              "condition)."]
    if metrics.get("gap_recovered") is not None:
        lines.append(f"The soft CoT recovers {metrics['gap_recovered']:.2f} of the accuracy gap between the question "
                     f"alone and the text CoT, with {_fmt(metrics.get('position_ratio'), '{:.1f}')}x fewer "
                     "context positions.")
    return lines


@dataclass
class Questions:
    """One run's predictions.jsonl, reduced to what the ratios need."""

    cot: dict[str, float]  # id → CoT tokens
    correct: set[str]  # ids answered correctly
    n_capped: int | None  # None when the records cannot tell


def read_questions(run: Run) -> Questions | None:
    """The per-question CoT lengths of a run; None when it has no predictions.jsonl (older scripts)."""
    path = run.path.parent / PREDICTIONS
    if not path.is_file():
        return None
    records = [record for record in read_jsonl(path, what="predictions") if "id" in record]
    decoding = run.metrics.get("decoding")
    cap = decoding.get("max_new_tokens") if isinstance(decoding, dict) else None
    return Questions(
        cot={str(r["id"]): float(r["cot_length"]) for r in records if r.get("cot_length") is not None},
        correct={str(r["id"]) for r in records if r.get("accuracy")},
        n_capped=_count_capped(records, cap),
    )


def _count_capped(records: list[dict], cap: int | None) -> int | None:
    """Records that hit the token cap: their `capped` flag, else (records of older runs)
    output_tokens ≥ the run's max_new_tokens; None if any record can tell neither way."""
    count = 0
    for record in records:
        if record.get("capped") is not None:
            count += bool(record["capped"])
        elif record.get("output_tokens") is not None and cap:
            count += record["output_tokens"] >= cap
        else:
            return None
    return count


def paired_ratio(run: Questions | None, reference: Questions | None, *,
                 both_correct: bool = False) -> tuple[float | None, int | None]:
    """Mean CoT tokens of `run` / of `reference` over the questions both answered (and, with
    `both_correct`, both got right), with the number of those questions."""
    if run is None or reference is None:
        return None, None
    ids = run.cot.keys() & reference.cot.keys()
    if both_correct:
        ids &= run.correct & reference.correct
    base = sum(reference.cot[i] for i in ids)
    return (sum(run.cot[i] for i in ids) / base if base else None), len(ids)


def _request_mean(metrics: dict | None) -> float | None:
    request = metrics.get("request_latency") if metrics else None
    return request.get("mean") if isinstance(request, dict) else None


def latency_of(metrics: dict, original: dict | None) -> tuple[float | None, str | None, float | None]:
    """This run's seconds per question, its basis and the speed-up over the original on that basis.
    Per-request latency where this run and the original both have it: batch wall time / n makes
    every question wait for its batch's longest, so it cannot show a shorter CoT's gain. Its mean,
    not p50, so that the long (often capped) outputs compression is meant to cut count."""
    own, theirs = _request_mean(metrics), _request_mean(original)
    # alone (a --latency-probe pass) and within a batch are different clocks: compare like with like
    same_clock = original is None or (metrics.get("request_latency") or {}).get("basis") == (
        original.get("request_latency") or {}).get("basis")
    if own is not None and (original is None or theirs is not None) and same_clock:
        return own, "request", theirs / own if theirs and own else None
    batch = metrics.get("sample_latency")
    base = original.get("sample_latency") if original else None
    return batch, "batch" if batch is not None else None, base / batch if base and batch else None


def read_training_ratios(group: Path, root: Path) -> list[TrainingRatios]:
    """Stage 2's summaries in the group, one per compression method that ran."""
    found = []
    for method in sorted(COMPRESSION_FOLDERS):
        path = compression_dir(group, method) / COMPRESSION_SUMMARY
        if not path.is_file():
            continue
        summary = read_json(path)
        ratios = {ratio_tag(float(key)): float(entry["mean_actual_ratio"])
                  for key, entry in summary.get("ratios", {}).items() if entry.get("mean_actual_ratio") is not None}
        found.append(TrainingRatios(summary.get("method") or method, str(path.relative_to(root)), ratios))
    return found


def make_table(group: Path, runs: list[Run], root: Path) -> Table:
    original_run = next((run for run in runs if run.method == "original"), None)
    original = original_run.metrics if original_run else None
    original_label = original_run.label if original_run else None
    questions = {run.path: read_questions(run) for run in runs}
    # each method's own γ = 1.0 run (TokenSkip/1.0/: the adapter told to keep everything)
    at_one = {run.label: run for run in runs if run.method != "original" and run.ratio == 1.0}
    training = read_training_ratios(group, root)
    rows = []
    for run in runs:
        metrics, path, mine = run.metrics, run.path, questions[run.path]
        accuracy = 100 * metrics["accuracy"]
        latency, basis, speedup = latency_of(metrics, original)
        theirs = questions[original_run.path] if original_run else None
        own_one = questions[at_one[run.label].path] if run.label in at_one else None
        vs_original, _ = paired_ratio(mine, theirs)
        vs_self, _ = paired_ratio(mine, own_one)
        vs_original_correct, n_original_correct = paired_ratio(mine, theirs, both_correct=True)
        vs_self_correct, n_self_correct = paired_ratio(mine, own_one, both_correct=True)
        median = metrics.get("median_cot_length")
        if median is None and mine and mine.cot:
            median = statistics.median(mine.cot.values())
        n_capped = metrics.get("n_capped")
        if n_capped is None and mine:
            n_capped = mine.n_capped
        train_data = {found.method: found.ratios[ratio_tag(run.ratio)] for found in training
                      if ratio_tag(run.ratio) in found.ratios} if run.method == "tokenskip" else {}
        rows.append(Row(
            method=run.label, ratio=run.ratio, accuracy=accuracy,
            accuracy_change=accuracy - 100 * original["accuracy"] if original else None,
            cot_tokens=metrics["avg_cot_length"],
            actual_ratio=metrics["avg_cot_length"] / original["avg_cot_length"]
            if original and original["avg_cot_length"] else None,
            latency=latency,
            speedup=speedup,
            n_samples=metrics.get("n_samples", 0),
            path=str(path.parent.relative_to(root)),
            latency_basis=basis,
            sample_latency=metrics.get("sample_latency"),
            request_latency=metrics.get("request_latency"),
            median_cot_tokens=median,
            n_capped=n_capped,
            ratio_vs_original=vs_original,
            ratio_vs_self=vs_self,
            ratio_vs_original_both_correct=vs_original_correct,
            ratio_vs_self_both_correct=vs_self_correct,
            n_both_correct_original=n_original_correct,
            n_both_correct_self=n_self_correct,
            train_data_ratios=train_data or None,
            thinking=metrics.get("thinking"),
        ))
    order = {run.label: list(METHOD_NAMES).index(run.method) if run.method in METHOD_NAMES else len(METHOD_NAMES)
             for run in runs}
    rows.sort(key=lambda row: (order[row.method], row.method, -row.ratio))
    benchmark = next((run.metrics["benchmark"] for run in runs if run.metrics.get("benchmark")), None) \
        or _benchmark_of(group)
    series: dict[str, list[Row]] = {}
    for row in rows:
        if row.method != original_label:
            series.setdefault(row.method, []).append(row)
    return Table(title=_title(group, root, benchmark), benchmark=benchmark, rows=rows, original=original_label,
                 adherence=[adherence(method, method_rows) for method, method_rows in series.items()],
                 training_ratios=training)


def _ratio_on(row: Row, basis: str) -> float | None:
    return {"self": row.ratio_vs_self, "original": row.ratio_vs_original, "original-means": row.actual_ratio}[basis]


def _is_target(ratio: float) -> bool:
    return any(math.isclose(ratio, target) for target in ADHERENCE_TARGETS)


def adherence(method: str, rows: list[Row]) -> Adherence:
    """One method's adherence summary; `rows` are its rows, largest γ first."""
    targeted = [row for row in rows if _is_target(row.ratio)]
    # one basis for the whole method, the best that each of its target γ (else each γ) has, so that its numbers compare
    basis = next((basis for basis in BASES if all(_ratio_on(row, basis) is not None for row in targeted or rows)),
                 None)
    actual = {ratio_tag(row.ratio): _ratio_on(row, basis) for row in rows
              if basis is not None and _ratio_on(row, basis) is not None}
    errors = [abs(actual[ratio_tag(row.ratio)] - row.ratio) for row in targeted if ratio_tag(row.ratio) in actual]
    lengths = [row.cot_tokens for row in rows]  # γ descending: each later run should be no longer
    inversions = sum(later > earlier for i, earlier in enumerate(lengths) for later in lengths[i + 1:])
    pairs = len(lengths) * (len(lengths) - 1) // 2
    return Adherence(method=method, basis=basis, actual=actual,
                     targets=[row.ratio for row in targeted if ratio_tag(row.ratio) in actual],
                     mean_abs_error=sum(errors) / len(errors) if errors else None,
                     monotonic=inversions == 0 if pairs else None, inversions=inversions, pairs=pairs)


def _title(group: Path, root: Path, benchmark: str) -> str:
    title = " / ".join(group.relative_to(root).parts) if group != root else group.name
    title = title or str(root)
    if benchmark not in title.split(" / "):
        title += f" ({benchmark})"
    return title


def _benchmark_of(group: Path) -> str:
    return next((part for part in reversed(group.parts) if part in BENCHMARK_NAMES), "unknown")


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _with_n(value: float | None, n: int | None) -> str:
    return "–" if value is None else f"{value:.2f} ({n})"


def _train_data(ratios: dict[str, float] | None, named: bool) -> str:
    """The value; named by method where the group has several compression summaries, e.g.
    "cts 0.55 / llmlingua2 0.62" (named even where only one of them has this γ)."""
    if not ratios:
        return "–"
    if not named:
        return f"{next(iter(ratios.values())):.2f}"
    return " / ".join(f"{method} {value:.2f}" for method, value in sorted(ratios.items()))


def _monotonic(summary: Adherence) -> str:
    return "–" if summary.monotonic is None else ("yes" if summary.monotonic else "no")


def markdown(tables: Sequence[Table], plot_name: str | None, adherence_plot_name: str | None = None) -> str:
    lines = ["# Results", ""]
    for table in tables:
        if table.soft is not None:
            lines += [f"## {table.title}", "", *soft_markdown(table.soft), ""]
            continue
        if not table.rows:  # only unfinished runs: they are listed below
            continue
        lines += [f"## {table.title}", "",
                  "| method | target γ | accuracy | Δ accuracy | CoT tokens | actual ratio | latency (s) "
                  "| speed-up | n | latency basis |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in table.rows:
            lines.append(
                f"| {row.method} | {row.ratio:g} | {row.accuracy:.1f}% | {_fmt(row.accuracy_change, '{:+.1f}')} | "
                f"{row.cot_tokens:.1f} | {_fmt(row.actual_ratio, '{:.2f}')} | {_fmt(row.latency, '{:.3f}')} | "
                f"{_fmt(row.speedup, '{:.2f}x')} | {row.n_samples} | {row.latency_basis or '–'} |")
        lines += ["", "### Ratio adherence", "",
                  "| method | target γ | mean CoT | median CoT | capped | vs original | vs γ=1.0 "
                  "| vs original, both correct | vs γ=1.0, both correct | train-data ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in table.rows:
            lines.append(
                f"| {row.method} | {row.ratio:g} | {row.cot_tokens:.1f} | {_fmt(row.median_cot_tokens, '{:.1f}')} | "
                f"{_fmt(row.n_capped, '{}')} | {_fmt(row.ratio_vs_original, '{:.2f}')} | "
                f"{_fmt(row.ratio_vs_self, '{:.2f}')} | "
                f"{_with_n(row.ratio_vs_original_both_correct, row.n_both_correct_original)} | "
                f"{_with_n(row.ratio_vs_self_both_correct, row.n_both_correct_self)} | "
                f"{_train_data(row.train_data_ratios, len(table.training_ratios) > 1)} |")
        if table.adherence:
            lines += ["", "| method | ratio basis | mean abs(actual − γ) | over γ | CoT shrinks as γ falls "
                          "| inversions |", "|---|---|---|---|---|---|"]
            for summary in table.adherence:
                lines.append(
                    f"| {summary.method} | {BASES[summary.basis] if summary.basis else '–'} | "
                    f"{_fmt(summary.mean_abs_error, '{:.3f}')} | "
                    f"{', '.join(f'{ratio:g}' for ratio in summary.targets) or '–'} | {_monotonic(summary)} | "
                    f"{summary.inversions} of {summary.pairs} pairs |")
        thinking_rows = [row for row in table.rows if row.thinking]
        if thinking_rows:
            lines += ["", "### Thinking and answer", "",
                      "| method | target γ | thinking tokens (mean) | thinking tokens (median) | answer tokens "
                      "| cut off in <think> | accuracy of finished |", "|---|---|---|---|---|---|---|"]
            for row in thinking_rows:
                think = row.thinking
                finished = think.get("accuracy_finished")
                lines.append(
                    f"| {row.method} | {row.ratio:g} | {think['mean_thinking_tokens']:.1f} | "
                    f"{think['median_thinking_tokens']:.1f} | {_fmt(think.get('mean_answer_tokens'), '{:.1f}')} | "
                    f"{think['n_unfinished']} of {think['n']} | "
                    f"{_fmt(None if finished is None else 100 * finished, '{:.1f}%')} |")
        lines.append("")
    if not any(table.rows for table in tables):
        return "\n".join(lines)
    lines += ["Accuracy is the primary grader's. Actual ratio = mean CoT tokens / the original run's; "
              "speed-up = the original's latency per sample / this run's, on the row's latency basis: request = "
              "the mean per-request latency (mean rather than p50, so that the long outputs compression cuts "
              "count), used where this run and the original both measured it; batch = batch wall time / n.", "",
              "Ratio adherence: vs original and vs γ=1.0 (the same method's γ = 1.0 run, which takes out what "
              "fine-tuning alone does to length) are mean CoT tokens / the reference run's over the questions "
              "both runs answered; \"both correct\" only over those both got right (their number in brackets). "
              "Capped = outputs that stopped at the token cap. Train-data ratio = stage 2's mean actual ratio "
              "of the training CoTs at that γ. Mean abs(actual − γ) is over γ in "
              f"{', '.join(f'{ratio:g}' for ratio in ADHERENCE_TARGETS)}, on the ratio basis named; an inversion "
              "is a pair of γ whose smaller one has the longer mean CoT.", ""]
    if plot_name:
        lines += [f"![accuracy vs CoT tokens]({plot_name})", ""]
    if adherence_plot_name:
        lines += [f"![actual vs target ratio]({adherence_plot_name})", ""]
    unfinished = [run for table in tables for run in table.unfinished]
    if unfinished:
        lines += ["unfinished runs (not in the tables):",
                  *(f"- {run.path} ({run.predictions} predictions)" for run in unfinished),
                  "", "Rerun the evaluation of each to finish it: it resumes where it stopped.", ""]
    return "\n".join(lines)


def as_json(table: Table) -> dict:
    """A table for --format json; the adherence summary and training ratios only where a group has
    some, so that a group of unfinished runs (nothing measured yet) reads as before."""
    found = asdict(table)
    for key in ("adherence", "training_ratios", "soft"):
        if not found[key]:
            del found[key]
    return found


def label_spots(rows: Sequence[Row], all_rows: Sequence[Row], near: float = 0.03):
    """One γ label per cluster of points closer than `near` of the panel's span on both axes,
    so that runs landing on (nearly) the same spot read "0.9/0.8/0.5" instead of overprinting."""
    span_x = (max(r.cot_tokens for r in all_rows) - min(r.cot_tokens for r in all_rows)) or 1.0
    span_y = (max(r.accuracy for r in all_rows) - min(r.accuracy for r in all_rows)) or 1.0
    spots: list[tuple[tuple[float, float], list[str]]] = []
    for row in rows:
        for (x, y), ratios in spots:
            if abs(row.cot_tokens - x) < near * span_x and abs(row.accuracy - y) < near * span_y:
                ratios.append(f"{row.ratio:g}")
                break
        else:
            spots.append(((row.cot_tokens, row.accuracy), [f"{row.ratio:g}"]))
    return spots


def lift_overlapping(figure, labels) -> None:
    """Move each γ label up until it no longer overprints one placed before it."""
    renderer = figure.canvas.get_renderer()
    placed = []
    for label in labels:
        for _ in range(12):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = label.xyann
            label.xyann = (x, y + 8)
        placed.append(label.get_window_extent(renderer))


def plot(tables: Sequence[Table], path: Path) -> int:
    """The paper's accuracy-vs-CoT-tokens figure, one panel per table; returns the number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [table for table in tables if table.rows]  # a group of unfinished runs has no point yet
    figure, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.8), squeeze=False)
    points = 0
    labels = []
    for axis, table in zip(axes[0], tables):
        by_method: dict[str, list[Row]] = {}
        for row in table.rows:
            by_method.setdefault(row.method, []).append(row)
        for method, rows in by_method.items():
            rows = sorted(rows, key=lambda row: -row.ratio)
            xs, ys = [row.cot_tokens for row in rows], [row.accuracy for row in rows]
            if method == table.original:
                axis.scatter(xs, ys, marker="*", s=260, color="black", zorder=3, label=method)
            else:
                axis.plot(xs, ys, marker="o", label=method)
                for spot, ratios in label_spots(rows, table.rows):
                    labels.append(axis.annotate("/".join(ratios), spot, textcoords="offset points", xytext=(4, 4),
                                                fontsize=8))
            points += len(rows)
        axis.set_title(table.title, fontsize=10)
        axis.set_xlabel("mean CoT tokens")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    lift_overlapping(figure, labels)
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, metadata={POINTS_KEY: str(points)})
    plt.close(figure)
    return points


def adherence_plot(tables: Sequence[Table], path: Path) -> int:
    """The paper's ratio-adherence figure, one panel per table: target γ against the actual ratio
    on each method's basis, with the y = x line a method that keeps to γ lies on; returns the
    number of points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [table for table in tables if table.rows]
    figure, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.8), squeeze=False)
    points = 0
    for axis, table in zip(axes[0], tables):
        axis.plot([0, 1.05], [0, 1.05], linestyle="--", color="grey", linewidth=1, label="y = x")
        for summary in table.adherence:
            if not summary.actual:
                continue
            ratios = sorted(summary.actual, key=float)
            axis.plot([float(ratio) for ratio in ratios], [summary.actual[ratio] for ratio in ratios], marker="o",
                      label=f"{summary.method} ({BASES[summary.basis]})")
            points += len(ratios)
        axis.set_title(table.title, fontsize=10)
        axis.set_xlabel("target ratio γ")
        axis.set_ylabel("actual ratio")
        axis.set_xlim(0, 1.05)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, metadata={POINTS_KEY: str(points)})
    plt.close(figure)
    return points


def build_parser() -> StageParser:
    parser = StageParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="an outputs folder, e.g. outputs/demo or outputs/Qwen2.5-7B-Instruct")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown",
                        help="markdown: results.md, results.png and results_adherence.png; "
                        "json: print the tables (and write results.json)")
    parser.add_argument("--out-dir", default=None, help="where to write the results (default: the root folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Table]:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    tables = collect(root)
    out_dir = Path(args.out_dir or root)
    if args.format == "json":
        text = json.dumps([as_json(table) for table in tables], indent=2)
        with atomic_writer(out_dir / "results.json") as handle:
            handle.write(text + "\n")
        print(text)
        return tables
    plotted = [table for table in tables if table.soft is None]  # soft-compression tables have no γ rows
    if not plotted:
        with atomic_writer(out_dir / "results.md") as handle:
            handle.write(markdown(tables, None))
        print(markdown(tables, None))
        print(f"wrote {out_dir / 'results.md'}")
        return tables
    points = plot(plotted, out_dir / "results.png")
    adherence_points = adherence_plot(plotted, out_dir / "results_adherence.png")
    with atomic_writer(out_dir / "results.md") as handle:
        handle.write(markdown(tables, "results.png", "results_adherence.png"))
    print(markdown(tables, None))
    print(f"wrote {out_dir / 'results.md'}, {out_dir / 'results.png'} ({points} points) and "
          f"{out_dir / 'results_adherence.png'} ({adherence_points} points)")
    return tables

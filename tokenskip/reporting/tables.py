"""The report's tables, read from the outputs tree: one per group of runs (a model's method
folders), each run a row compared with the group's original run, and how well each method keeps to γ."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.settings import METRICS_KIND as SOFT_METRICS
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json, read_jsonl
from tokenskip.core.layout import (
    COMPRESSION_FOLDERS,
    COMPRESSION_SUMMARY,
    METRICS,
    PREDICTIONS,
    RATIO_FREE_METHODS,
    RUN_SETTINGS,
    compression_dir,
    place,
)
from tokenskip.core.ratios import DEFAULT_RATIOS, ratio_tag
from tokenskip.data.benchmarks import BENCHMARKS, DATASET_DIRS
from tokenskip.reporting.published import PAPER, PAPER_URL, RATIO_BASIS, PublishedTable, find_table, model_names

BENCHMARK_NAMES = (*BENCHMARKS, *DATASET_DIRS.values())  # as output folders name them
# also the order of the rows
METHOD_NAMES = {"original": "Original", "tokenskip": "TokenSkip", "ratio-tag": "Base model + γ tag",
                "truncation": "Truncation", "prompt": "Prompt-based", "budget": "Budget forcing",
                "budget-prompt": "Token-budget prompt", "cod": "Chain-of-Draft", "nothinking": "NoThinking"}


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
    # the adapter's sha256 (metrics.json, since adapters are hashed) and folder; None for base-model runs
    adapter_sha256: str | None = None
    adapter_path: str | None = None
    method_id: str | None = None  # the layout's method (original, tokenskip, ...), whatever the label
    max_new_tokens: int | None = None  # the run's token cap, where metrics.json records it
    budget_tokens: int | None = None  # a baseline run at a budget given in tokens (--budget-tokens)

    @property
    def takes_ratio(self) -> bool:
        """False for the methods that run without γ (Chain-of-Draft, NoThinking) and for runs at a budget given in
        tokens: no γ target, no adherence."""
        return self.method_id not in RATIO_FREE_METHODS and self.budget_tokens is None

    @property
    def target(self) -> str:
        """The row's target as the tables show it: γ, a token budget ("64 tok"), or "–" for none."""
        if self.budget_tokens is not None:
            return f"{self.budget_tokens} tok"
        return f"{self.ratio:g}" if self.takes_ratio else "–"

    @property
    def name(self) -> str:
        """The row as one name: its method and target ("Budget forcing 0.5", "Budget forcing 64 tok")."""
        return self.method if self.target == "–" else f"{self.method} {self.target}"


@dataclass
class FrontierPoint:
    """One row on the accuracy-vs-CoT-tokens plane: on the Pareto frontier, or which row dominates it (as
    accurate or more with as few CoT tokens or fewer, better in one of the two)."""

    method: str
    target: str  # the row's γ or token budget, "–" for methods without one
    cot_tokens: float
    accuracy: float
    dominated_by: str | None  # "method γ" of the row that dominates it (the most accurate such); None: on it


@dataclass
class PaperRow:
    """One of the user's rows beside the paper's row for the same method and γ."""

    method: str  # the user's label
    ratio: float
    paper_accuracy: float
    accuracy: float
    paper_cot_tokens: float
    cot_tokens: float
    paper_actual_ratio: float | None
    actual_ratio: float | None  # computed as the paper computes its ActRatio (published.RATIO_BASIS)
    n_samples: int
    max_new_tokens: int | None


@dataclass
class PaperComparison:
    """A group whose model and benchmark the paper reports: its rows beside the published ones."""

    model: str
    benchmark: str
    source: str  # the paper and its table
    url: str
    questions: int  # the paper's test-set size
    max_new_tokens: int  # the paper's token cap
    rows: list[PaperRow]

    def differences(self) -> list[str]:
        """The settings in which the user's rows differ from the paper's, each said once."""
        found = []
        sizes = sorted({row.n_samples for row in self.rows if row.n_samples != self.questions})
        if sizes:
            found.append(f"{'/'.join(map(str, sizes))} questions, the paper all {self.questions}")
        caps = sorted({row.max_new_tokens for row in self.rows
                       if row.max_new_tokens is not None and row.max_new_tokens != self.max_new_tokens})
        if caps:
            found.append(f"at most {'/'.join(map(str, caps))} new tokens, the paper {self.max_new_tokens}")
        return found


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
    paper: PaperComparison | None = None  # where the TokenSkip paper reports this model and benchmark
    frontier: list[FrontierPoint] = field(default_factory=list)  # every row, fewest CoT tokens first

    def mixed_adapters(self) -> dict[str, dict[str, list[Row]]]:
        """Labels whose γ rows come from more than one adapter: label -> adapter (sha256, else folder) -> rows.
        A γ table is a statement about one adapter; rows of two are not comparable."""
        found: dict[str, dict[str, list[Row]]] = {}
        for row in self.rows:
            identity = row.adapter_sha256 or row.adapter_path
            if identity:
                found.setdefault(row.method, {}).setdefault(identity, []).append(row)
        return {label: by for label, by in found.items() if len(by) > 1}


@dataclass
class Run:
    group: Path
    method: str
    label: str
    ratio: float
    metrics: dict
    path: Path
    budget_tokens: int | None = None  # a baseline run at a budget given in tokens


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
    budget_tokens = metrics.get("budget_tokens", where.budget_tokens if where is not None else None)
    return Run(group, method, label, ratio, metrics, metrics_path, budget_tokens)


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


def own_full_run(method: str | None, ratio: float, budget_tokens: int | None) -> bool:
    """Whether a run is its method's own γ = 1.0 run (TokenSkip/1.0/: the adapter told to keep everything), the
    basis of that method's ratios against itself; the original, a method without γ and a token budget have none."""
    return (method not in (None, "original") and method not in RATIO_FREE_METHODS and ratio == 1.0
            and budget_tokens is None)


def make_table(group: Path, runs: list[Run], root: Path) -> Table:
    original_run = next((run for run in runs if run.method == "original"), None)
    original_label = original_run.label if original_run else None
    questions = {run.path: read_questions(run) for run in runs}
    at_one = {run.label: run for run in runs if own_full_run(run.method, run.ratio, run.budget_tokens)}
    training = read_training_ratios(group, root)
    rows = []
    for run in runs:
        theirs = questions[original_run.path] if original_run else None
        own_one = questions[at_one[run.label].path] if run.label in at_one else None
        train_data = {found.method: found.ratios[ratio_tag(run.ratio)] for found in training
                      if ratio_tag(run.ratio) in found.ratios} if run.method == "tokenskip" else {}
        rows.append(_row(run, original_run.metrics if original_run else None, root,
                         questions[run.path], theirs, own_one, train_data))
    order = {run.label: list(METHOD_NAMES).index(run.method) if run.method in METHOD_NAMES else len(METHOD_NAMES)
             for run in runs}
    # γ runs by falling γ, then the runs at token budgets by falling budget
    rows.sort(key=lambda row: (order[row.method], row.method, row.budget_tokens is not None, -row.ratio,
                               -(row.budget_tokens or 0)))
    benchmark = next((run.metrics["benchmark"] for run in runs if run.metrics.get("benchmark")), None) \
        or _benchmark_of(group)
    series: dict[str, list[Row]] = {}
    for row in rows:
        if row.method != original_label and row.takes_ratio:
            series.setdefault(row.method, []).append(row)
    model_path = next((run.metrics["model_path"] for run in runs if run.metrics.get("model_path")), None)
    published = find_table(model_names(model_path, group), benchmark)
    return Table(title=_title(group, root, benchmark), benchmark=benchmark, rows=rows, original=original_label,
                 adherence=[adherence(method, method_rows) for method, method_rows in series.items()],
                 training_ratios=training, paper=beside_paper(rows, published) if published else None,
                 frontier=pareto(rows))


def pareto(rows: list[Row]) -> list[FrontierPoint]:
    """Every row placed against the others on accuracy and mean CoT tokens (fewest tokens first): which are on the
    Pareto frontier, and, for each that is not, the most accurate row that dominates it."""
    points = []
    for row in sorted(rows, key=lambda r: (r.cot_tokens, -r.accuracy)):
        better = [other for other in rows if other is not row and other.accuracy >= row.accuracy
                  and other.cot_tokens <= row.cot_tokens
                  and (other.accuracy > row.accuracy or other.cot_tokens < row.cot_tokens)]
        best = max(better, key=lambda r: (r.accuracy, -r.cot_tokens), default=None)
        points.append(FrontierPoint(method=row.method, target=row.target, cot_tokens=row.cot_tokens,
                                    accuracy=row.accuracy, dominated_by=best.name if best else None))
    return points


def beside_paper(rows: list[Row], published: PublishedTable) -> PaperComparison | None:
    """The rows the paper has a number for (same method, same γ), each beside it; None when none has."""
    at_one = {row.method: row.cot_tokens for row in rows if own_full_run(row.method_id, row.ratio, row.budget_tokens)}
    paired = []
    for row in rows:
        if row.budget_tokens is not None:  # the paper's runs are by γ
            continue
        theirs = published.find(row.method_id, row.ratio) if row.method_id else None
        if theirs is None:
            continue
        ratio = row.actual_ratio  # against the original's mean
        if RATIO_BASIS.get(row.method_id) == "self":
            ratio = row.cot_tokens / at_one[row.method] if at_one.get(row.method) else None
        paired.append(PaperRow(method=row.method, ratio=row.ratio, paper_accuracy=theirs.accuracy,
                               accuracy=row.accuracy, paper_cot_tokens=theirs.cot_tokens, cot_tokens=row.cot_tokens,
                               paper_actual_ratio=theirs.actual_ratio, actual_ratio=ratio,
                               n_samples=row.n_samples, max_new_tokens=row.max_new_tokens))
    if not paired:
        return None
    return PaperComparison(model=published.model, benchmark=published.benchmark,
                           source=f"{PAPER}, {published.source}", url=PAPER_URL, questions=published.questions,
                           max_new_tokens=published.max_new_tokens, rows=paired)


def _row(run: Run, original: dict | None, root: Path, mine, theirs, own_one, train_data: dict) -> Row:
    """One run's line: its metrics, and its CoT ratios paired question by question with the base
    model's run (`theirs`) and with its own γ = 1.0 run (`own_one`)."""
    metrics = run.metrics
    accuracy = 100 * metrics["accuracy"]
    latency, basis, speedup = latency_of(metrics, original)
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
    decoding = metrics.get("decoding")
    return Row(
        method=run.label, ratio=run.ratio, accuracy=accuracy,
        accuracy_change=accuracy - 100 * original["accuracy"] if original else None,
        cot_tokens=metrics["avg_cot_length"],
        actual_ratio=metrics["avg_cot_length"] / original["avg_cot_length"]
        if original and original["avg_cot_length"] else None,
        latency=latency,
        speedup=speedup,
        n_samples=metrics.get("n_samples", 0),
        path=str(run.path.parent.relative_to(root)),
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
        adapter_sha256=metrics.get("adapter_sha256"),
        adapter_path=metrics.get("adapter_path"),
        method_id=run.method,
        max_new_tokens=decoding.get("max_new_tokens") if isinstance(decoding, dict) else None,
        budget_tokens=run.budget_tokens,
    )


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

"""Results of any run: every test-split `metrics.json` under a folder, as tables and a plot.

Rows are grouped by the folder that holds a model's method folders (`{model}/{benchmark}/{size}/`
in the original layout) and compared with that group's original run: accuracy change, actual
compression ratio (mean CoT tokens / the original's) next to the target γ, and speed-up.
Metrics written by older scripts, which carry only `accuracy`, `avg_cot_length` and
`sample_latency`, are placed by their path (`Original/`, `TokenSkip/<γ>/`, ...), read back by
`tokenskip.layout.place`. Runs that were started but never finished (settings, no metrics.json)
are listed after the tables, so that a missing row is never a silent one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tokenskip.cli import StageParser
from tokenskip.errors import UsageError
from tokenskip.jsonio import atomic_writer, read_json
from tokenskip.layout import METRICS, PREDICTIONS, RUN_SETTINGS, place

METHOD_NAMES = {"original": "Original", "tokenskip": "TokenSkip", "ratio-tag": "Base model + γ tag",
                "truncation": "Truncation", "prompt": "Prompt-based"}  # also the order of the rows
POINTS_KEY = "tokenskip:points"  # PNG text chunk: how many points the plot holds


@dataclass
class Row:
    method: str  # the run's label
    ratio: float
    accuracy: float  # percent
    accuracy_change: float | None
    cot_tokens: float
    actual_ratio: float | None
    latency: float | None
    speedup: float | None
    n_samples: int
    path: str


@dataclass
class Unfinished:
    """A run evaluation.py started and did not finish (interrupted, or still going): no metrics.json yet."""

    path: str  # its samples folder, relative to the report's root
    predictions: int  # answers written so far


@dataclass
class Table:
    title: str
    benchmark: str
    rows: list[Row]
    original: str | None  # the label of the row the others are compared with
    unfinished: list[Unfinished] = field(default_factory=list)  # this group's runs that are not rows yet


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
    for path in files:
        run = describe(path)
        if run:
            groups.setdefault(run.group, []).append(run)
    if not groups:
        raise UsageError(f"the runs under {root} are all on the training split; evaluate on --data-type test")
    tables = {group: make_table(group, runs, root) for group, runs in groups.items()}
    for group, runs in unfinished.items():
        # a group whose runs are all unfinished gets an empty table, which carries them in the json
        table = tables.get(group) or Table(_title(group, root, _benchmark_of(group)), _benchmark_of(group), [], None)
        table.unfinished = runs
        tables[group] = table
    return [tables[group] for group in sorted(tables)]


def make_table(group: Path, runs: list[Run], root: Path) -> Table:
    original = next((run.metrics for run in runs if run.method == "original"), None)
    original_label = next((run.label for run in runs if run.method == "original"), None)
    rows = []
    for run in runs:
        metrics, path = run.metrics, run.path
        accuracy = 100 * metrics["accuracy"]
        latency = metrics.get("sample_latency")
        rows.append(Row(
            method=run.label, ratio=run.ratio, accuracy=accuracy,
            accuracy_change=accuracy - 100 * original["accuracy"] if original else None,
            cot_tokens=metrics["avg_cot_length"],
            actual_ratio=metrics["avg_cot_length"] / original["avg_cot_length"]
            if original and original["avg_cot_length"] else None,
            latency=latency,
            speedup=original["sample_latency"] / latency if original and original.get("sample_latency") and latency
            else None,
            n_samples=metrics.get("n_samples", 0),
            path=str(path.parent.relative_to(root)),
        ))
    order = {run.label: list(METHOD_NAMES).index(run.method) if run.method in METHOD_NAMES else len(METHOD_NAMES)
             for run in runs}
    rows.sort(key=lambda row: (order[row.method], row.method, -row.ratio))
    benchmark = next((run.metrics["benchmark"] for run in runs if run.metrics.get("benchmark")), None) \
        or _benchmark_of(group)
    return Table(title=_title(group, root, benchmark), benchmark=benchmark, rows=rows, original=original_label)


def _title(group: Path, root: Path, benchmark: str) -> str:
    title = " / ".join(group.relative_to(root).parts) if group != root else group.name
    title = title or str(root)
    if benchmark not in title.split(" / "):
        title += f" ({benchmark})"
    return title


def _benchmark_of(group: Path) -> str:
    return next((part for part in reversed(group.parts) if part in ("gsm8k", "math", "math-500")), "unknown")


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def markdown(tables: Sequence[Table], plot_name: str | None) -> str:
    lines = ["# Results", ""]
    for table in tables:
        if not table.rows:  # only unfinished runs: they are listed below
            continue
        lines += [f"## {table.title}", "",
                  "| method | target γ | accuracy | Δ accuracy | CoT tokens | actual ratio | latency (s) "
                  "| speed-up | n |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in table.rows:
            lines.append(
                f"| {row.method} | {row.ratio:g} | {row.accuracy:.1f}% | {_fmt(row.accuracy_change, '{:+.1f}')} | "
                f"{row.cot_tokens:.1f} | {_fmt(row.actual_ratio, '{:.2f}')} | {_fmt(row.latency, '{:.3f}')} | "
                f"{_fmt(row.speedup, '{:.2f}x')} | {row.n_samples} |")
        lines.append("")
    lines += ["Accuracy is the primary grader's. Actual ratio = mean CoT tokens / the original run's; "
              "speed-up = the original's latency per sample / this run's.", ""]
    if plot_name:
        lines += [f"![accuracy vs CoT tokens]({plot_name})", ""]
    unfinished = [run for table in tables for run in table.unfinished]
    if unfinished:
        lines += ["unfinished runs (not in the tables):",
                  *(f"- {run.path} ({run.predictions} predictions)" for run in unfinished),
                  "", "Rerun the evaluation of each to finish it: it resumes where it stopped.", ""]
    return "\n".join(lines)


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


def build_parser() -> StageParser:
    parser = StageParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="an outputs folder, e.g. outputs/demo or outputs/Qwen2.5-7B-Instruct")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown",
                        help="markdown: results.md and results.png; json: print the tables (and write results.json)")
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
        text = json.dumps([asdict(table) for table in tables], indent=2)
        with atomic_writer(out_dir / "results.json") as handle:
            handle.write(text + "\n")
        print(text)
        return tables
    points = plot(tables, out_dir / "results.png")
    with atomic_writer(out_dir / "results.md") as handle:
        handle.write(markdown(tables, "results.png"))
    print(markdown(tables, None))
    print(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.png'} ({points} points)")
    return tables

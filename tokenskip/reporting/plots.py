"""The plots: accuracy against CoT tokens (every method, the Pareto frontier drawn), and actual against target γ."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tokenskip.core.jsonio import atomic_writer
from tokenskip.reporting.tables import BASES, POINTS_KEY, Row, Table


def label_spots(rows: Sequence[Row], all_rows: Sequence[Row], near: float = 0.03):
    """One γ label per cluster of points closer than `near` of the panel's span on both axes,
    so that runs landing on (nearly) the same spot read "0.9/0.8/0.5" instead of overprinting."""
    span_x = (max(r.cot_tokens for r in all_rows) - min(r.cot_tokens for r in all_rows)) or 1.0
    span_y = (max(r.accuracy for r in all_rows) - min(r.accuracy for r in all_rows)) or 1.0
    spots: list[tuple[tuple[float, float], list[str]]] = []
    for row in rows:
        for (x, y), ratios in spots:
            if abs(row.cot_tokens - x) < near * span_x and abs(row.accuracy - y) < near * span_y:
                ratios.append(row.target)
                break
        else:
            spots.append(((row.cot_tokens, row.accuracy), [row.target]))
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
        # one line per method and kind of target: a baseline's runs by γ and its runs at token budgets apart
        by_method: dict[tuple[str, bool], list[Row]] = {}
        for row in table.rows:
            by_method.setdefault((row.method, row.budget_tokens is not None), []).append(row)
        for (method, by_tokens), rows in by_method.items():
            rows = sorted(rows, key=lambda row: -(row.budget_tokens or 0) if by_tokens else -row.ratio)
            xs, ys = [row.cot_tokens for row in rows], [row.accuracy for row in rows]
            if method == table.original:
                axis.scatter(xs, ys, marker="*", s=260, color="black", zorder=3, label=method)
            elif not by_tokens and not rows[0].takes_ratio:  # one run, no γ: a point, named in the legend
                axis.plot(xs, ys, marker="D", linestyle="none", zorder=3, label=method)
            else:
                axis.plot(xs, ys, marker="s" if by_tokens else "o", linestyle=":" if by_tokens else "-",
                          label=f"{method} (token budgets)" if by_tokens else method)
                for spot, ratios in label_spots(rows, table.rows):
                    labels.append(axis.annotate("/".join(ratios), spot, textcoords="offset points", xytext=(4, 4),
                                                fontsize=8))
            points += len(rows)
        frontier = [(p.cot_tokens, p.accuracy) for p in table.frontier if p.dominated_by is None]
        if len(frontier) > 1:  # the Pareto frontier as a staircase: no run lies above and left of it
            axis.step([x for x, _ in frontier], [y for _, y in frontier], where="post", linestyle="--",
                      color="gray", linewidth=1, zorder=1, label="Pareto frontier")
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


def gamma_matrix_plot(matrix: dict, path: Path, title: str) -> int:
    """The γ-probe matrix (tokenskip/evaluation/likelihood.py) as a heat map: rows data ratio γd,
    columns prompt tag γp. Colour is each cell minus its row's best, so that every row's peak is the
    brightest cell whatever the row's level (compressed CoTs are less likely everywhere); the number
    printed is the raw mean log-likelihood per token, the peak boxed. Returns the number of cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ratios = [f"{r:g}" for r in matrix["ratios"]]
    values = matrix["mean_loglik"]
    relative = [[cell - max(row) for cell in row] for row in values]
    figure, axis = plt.subplots(figsize=(1.1 * len(ratios) + 2.2, 0.8 * len(ratios) + 1.6))
    image = axis.imshow(relative, cmap="viridis", vmax=0.0, aspect="auto")
    for i, row in enumerate(values):
        peak = max(range(len(row)), key=row.__getitem__)
        for j, cell in enumerate(row):
            axis.text(j, i, f"{cell:.3f}", ha="center", va="center", fontsize=8,
                      color="black" if j == peak else "white")
        axis.add_patch(Rectangle((peak - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axis.set_xticks(range(len(ratios)), [r if r != "1" else "1 (none)" for r in ratios])
    axis.set_yticks(range(len(ratios)), ratios)
    axis.set_xlabel("prompt tag γp")
    axis.set_ylabel("data ratio γd of the CoT")
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label="log-lik/token − row's best")
    figure.tight_layout()
    cells = len(ratios) * len(ratios)
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, metadata={POINTS_KEY: str(cells)})
    plt.close(figure)
    return cells

"""The tables as results.md (markdown) and as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Sequence

from tokenskip.reporting.tables import ADHERENCE_TARGETS, BASES, Adherence, PaperComparison, Table


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
        elif table.rows:  # a table of only unfinished runs has none: they are listed below
            lines += [f"## {table.title}", "", *_mixed_adapters(table), *_results(table), "", *_adherence(table),
                      *_thinking(table), *_frontier(table), *_paper(table.paper), ""]
    if not any(table.rows for table in tables):
        return "\n".join(lines)
    lines += [*NOTES, ""]
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


NOTES = (
    "Accuracy is the primary grader's. Actual ratio = mean CoT tokens / the original run's; "
    "speed-up = the original's latency per sample / this run's, on the row's latency basis: request = "
    "the mean per-request latency (mean rather than p50, so that the long outputs compression cuts "
    "count), used where this run and the original both measured it; batch = batch wall time / n.", "",
    "Ratio adherence: vs original and vs γ=1.0 (the same method's γ = 1.0 run, which takes out what "
    "fine-tuning alone does to length) are mean CoT tokens / the reference run's over the questions "
    "both runs answered; \"both correct\" only over those both got right (their number in brackets). "
    "Capped = outputs that stopped at the token cap. Train-data ratio = stage 2's mean actual ratio "
    "of the training CoTs at that γ. Mean abs(actual − γ) is over γ in "
    f"{', '.join(f'{ratio:g}' for ratio in ADHERENCE_TARGETS)}, on the ratio basis named; an inversion "
    "is a pair of γ whose smaller one has the longer mean CoT.",
)


def _mixed_adapters(table: Table) -> list[str]:
    """A warning above a table whose γ rows of one label come from different adapters."""
    lines = []
    for label, by in table.mixed_adapters().items():
        parts = "; ".join(f"γ {', '.join(f'{row.ratio:g}' for row in rows)} from {rows[0].adapter_path} "
                          f"(sha256 {(rows[0].adapter_sha256 or 'not recorded')[:12]})" for rows in by.values())
        lines += [f"**Warning: the rows of {label} come from {len(by)} different adapters** ({parts}): they do "
                  "not show one adapter's response to γ; evaluate one adapter at every γ, or give each its own "
                  "--label.", ""]
    return lines


def _results(table: Table) -> list[str]:
    lines = ["| method | target γ | accuracy | Δ accuracy | CoT tokens | actual ratio | latency (s) "
             "| speed-up | n | latency basis |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.rows:
        lines.append(
            f"| {row.method} | {row.target} | {row.accuracy:.1f}% | {_fmt(row.accuracy_change, '{:+.1f}')} | "
            f"{row.cot_tokens:.1f} | {_fmt(row.actual_ratio, '{:.2f}')} | {_fmt(row.latency, '{:.3f}')} | "
            f"{_fmt(row.speedup, '{:.2f}x')} | {row.n_samples} | {row.latency_basis or '–'} |")
    return lines


def _adherence(table: Table) -> list[str]:
    lines = ["### Ratio adherence", "",
             "| method | target γ | mean CoT | median CoT | capped | vs original | vs γ=1.0 "
             "| vs original, both correct | vs γ=1.0, both correct | train-data ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.rows:
        lines.append(
            f"| {row.method} | {row.target} | {row.cot_tokens:.1f} | {_fmt(row.median_cot_tokens, '{:.1f}')} | "
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
    return lines


def _frontier(table: Table) -> list[str]:
    """Which rows are on the accuracy-vs-CoT-tokens Pareto frontier, and what dominates the others."""
    if len(table.frontier) < 2:
        return []
    lines = ["", "### Accuracy against CoT tokens: the Pareto frontier", "",
             "| method | target γ | CoT tokens | accuracy | on the frontier |", "|---|---|---|---|---|"]
    for point in table.frontier:
        lines.append(f"| {point.method} | {point.target} | {point.cot_tokens:.1f} | {point.accuracy:.1f}% | "
                     + ("yes |" if point.dominated_by is None else f"no: {point.dominated_by} |"))
    lines += ["", "A row is dominated when another is as accurate or more with as few CoT tokens or fewer (better in "
                  "one); the frontier is the rows no other dominates, drawn dashed in the plot."]
    return lines


def _thinking(table: Table) -> list[str]:
    thinking_rows = [row for row in table.rows if row.thinking]
    if not thinking_rows:
        return []
    lines = ["", "### Thinking and answer", "",
             "| method | target γ | thinking tokens (mean) | thinking tokens (median) | answer tokens "
             "| cut off in <think> | accuracy of finished |", "|---|---|---|---|---|---|---|"]
    for row in thinking_rows:
        think = row.thinking
        finished = think.get("accuracy_finished")
        lines.append(
            f"| {row.method} | {row.target} | {think['mean_thinking_tokens']:.1f} | "
            f"{think['median_thinking_tokens']:.1f} | {_fmt(think.get('mean_answer_tokens'), '{:.1f}')} | "
            f"{think['n_unfinished']} of {think['n']} | "
            f"{_fmt(None if finished is None else 100 * finished, '{:.1f}%')} |")
    return lines


def _difference(mine: float | None, theirs: float | None, pattern: str) -> str:
    return "–" if mine is None or theirs is None else pattern.format(mine - theirs)


def _paper(comparison: PaperComparison | None) -> list[str]:
    """The rows the paper reports, beside its numbers: a reproduction check."""
    if comparison is None:
        return []
    lines = ["", "### Beside the paper", "",
             f"{comparison.model} on {comparison.benchmark}, published in [{comparison.source}]({comparison.url}).", "",
             "| method | target γ | accuracy: paper | yours | Δ | CoT tokens: paper | yours | Δ "
             "| actual ratio: paper | yours | Δ |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in comparison.rows:
        lines.append(
            f"| {row.method} | {row.ratio:g} | {row.paper_accuracy:.1f}% | {row.accuracy:.1f}% | "
            f"{row.accuracy - row.paper_accuracy:+.1f} | {row.paper_cot_tokens:.1f} | {row.cot_tokens:.1f} | "
            f"{row.cot_tokens - row.paper_cot_tokens:+.1f} | {_fmt(row.paper_actual_ratio, '{:.2f}')} | "
            f"{_fmt(row.actual_ratio, '{:.2f}')} | "
            f"{_difference(row.actual_ratio, row.paper_actual_ratio, '{:+.2f}')} |")
    differences = comparison.differences()
    if differences:
        setting = f"Not the paper's setting: {'; '.join(differences)}, so the differences are not a reproduction check."
    else:
        setting = (f"Same number of test questions ({comparison.questions}) and token cap "
                   f"({comparison.max_new_tokens}) as the paper.")
    lines += ["", "Actual ratio as the paper computes it: mean CoT tokens over all questions, an adapter's against its "
              "own γ = 1.0 run, a baseline's against the original run.", "", setting]
    return lines


def as_json(table: Table) -> dict:
    """A table for --format json; the adherence summary and training ratios only where a group has
    some, so that a group of unfinished runs (nothing measured yet) reads as before."""
    found = asdict(table)
    for row, entry in zip(table.rows, found["rows"]):
        entry["target"] = row.target  # the γ as the tables show it ("–" for methods without one)
    mixed = table.mixed_adapters()
    if mixed:
        found["mixed_adapters"] = {label: sorted(by) for label, by in mixed.items()}
    for key in ("adherence", "training_ratios", "soft", "paper", "frontier"):
        if not found[key]:
            del found[key]
    return found


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

"""Run-level numbers computed from per-question prediction records."""

from __future__ import annotations


def summarize(records: list[dict], *, primary: str, total_seconds: float | None, total_tokens: int | None) -> dict:
    """Accuracy, CoT length and speed of one run, plus how the second grader agrees."""
    n = len(records)
    summary = {
        "n_samples": n,
        "accuracy": sum(bool(r["accuracy"]) for r in records) / n,
        "avg_cot_length": sum(r["cot_length"] for r in records) / n,
        "sample_latency": total_seconds / n if total_seconds is not None else None,
        "tokens_per_second": total_tokens / total_seconds if total_seconds and total_tokens is not None else None,
        "n_invalid": sum(1 for r in records if not r["prediction"]),
        "grader": primary,
    }
    for name in sorted({name for r in records for name in r["grades"]} - {primary}):
        verdicts = [(bool(r["grades"][primary]), bool(r["grades"][name])) for r in records if name in r["grades"]]
        summary["second_grader"] = name
        summary["second_grader_accuracy"] = sum(second for _, second in verdicts) / len(verdicts)
        summary["grader_disagreements"] = sum(first != second for first, second in verdicts)
    summary["grading_timeouts"] = sum(len(r.get("grade_timeouts", [])) for r in records)
    return summary

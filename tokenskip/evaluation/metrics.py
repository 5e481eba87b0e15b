"""Run-level numbers computed from per-question prediction records."""

from __future__ import annotations

import statistics

from tokenskip.grading.graders import GRADER_RULES


def summarize(records: list[dict], *, primary: str, total_seconds: float | None, total_tokens: int | None,
              timings: list[dict] = ()) -> dict:
    """Accuracy, CoT length and speed of one run, plus how the second grader agrees."""
    n = len(records)
    summary = {
        "n_samples": n,
        "accuracy": sum(bool(r["accuracy"]) for r in records) / n,
        "avg_cot_length": sum(r["cot_length"] for r in records) / n,
        "median_cot_length": statistics.median(r["cot_length"] for r in records),
        # outputs that ran into the token budget: on small models such loops dominate the mean
        "n_capped": sum(1 for r in records if r.get("capped")),
        # batch wall time / n: every question of a batch waits for its longest, so this cannot show
        # a per-question gain; request_latency below is what one request takes
        "sample_latency": total_seconds / n if total_seconds is not None else None,
        "request_latency": request_latency(timings),
        "tokens_per_second": total_tokens / total_seconds if total_seconds and total_tokens is not None else None,
        "n_invalid": sum(1 for r in records if not r["prediction"]),
        "grader": primary,
        "grader_rules": GRADER_RULES.get(primary, ""),  # which rules decided `accuracy`
    }
    for name in sorted({name for r in records for name in r["grades"]} - {primary}):
        verdicts = [(bool(r["grades"][primary]), bool(r["grades"][name])) for r in records if name in r["grades"]]
        summary["second_grader"] = name
        summary["second_grader_accuracy"] = sum(second for _, second in verdicts) / len(verdicts)
        summary["grader_disagreements"] = sum(first != second for first, second in verdicts)
    missing = missing_latency_reason(list(timings))
    if missing:
        summary["request_latency_missing"] = missing
    summary["grading_timeouts"] = sum(len(r.get("grade_timeouts", [])) for r in records)
    thinking = thinking_summary(records)
    if thinking:
        summary["thinking"] = thinking
    return summary


def thinking_summary(records: list[dict]) -> dict | None:
    """Thinking and answer tokens apart, for runs of a reasoning model (records with `thinking_tokens`);
    `n_unfinished`: outputs that ended inside <think>, at the token limit or by stopping there (no answer, graded
    incorrect)."""
    thinking = [r for r in records if "thinking_tokens" in r]
    if not thinking:
        return None
    finished = [r for r in thinking if r.get("thinking_finished", True)]
    return {
        "n": len(thinking),
        "n_unfinished": len(thinking) - len(finished),
        "mean_thinking_tokens": sum(r["thinking_tokens"] for r in thinking) / len(thinking),
        "median_thinking_tokens": statistics.median(r["thinking_tokens"] for r in thinking),
        "mean_answer_tokens": (sum(r["answer_tokens"] for r in finished) / len(finished)) if finished else None,
        "accuracy_finished": (sum(bool(r["accuracy"]) for r in finished) / len(finished)) if finished else None,
    }


def request_latency(timings: list[dict]) -> dict | None:
    """Mean, median and 90th percentile of the per-request times in a run's timing log (each entry's
    `latency_s`, one per id); None without any. Times of one kind only: when a --latency-probe pass
    timed some questions alone, just those, not mixed with the others' finish times in their batches."""
    probed = [t for t in timings if t.get("probe")]
    times = sorted(s for t in probed or timings for s in t.get("latency_s") or [] if s is not None)
    if not times:
        return None
    # entries name their basis since backends measure differently (the hf backend: a request's finish
    # time within its batch; vLLM: its own request stats); older logs, without one, are hf's
    bases = sorted({t.get("basis") or "within its batch" for t in timings if not t.get("probe")})
    return {"mean": sum(times) / len(times), "p50": statistics.median(times), "p90": _percentile(times, 0.9),
            "n": len(times), "basis": "alone (--latency-probe)" if probed else " + ".join(bases)}


def missing_latency_reason(timings: list[dict]) -> str | None:
    """Why a run that generated has no request_latency: its backend reported no per-request times."""
    generated = [t for t in timings if not t.get("probe")]
    if generated and request_latency(timings) is None:
        backends = sorted({t.get("basis") or "unknown" for t in generated})
        return f"the backend reported no per-request times ({', '.join(backends)})"
    return None


def _percentile(ordered: list[float], share: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

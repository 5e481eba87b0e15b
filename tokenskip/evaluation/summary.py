"""The lines a finished run prints: accuracy, CoT length, latency and where its files are."""

from __future__ import annotations

import math
from pathlib import Path


def print_summary(metrics: dict, predictions: Path, metrics_path: Path) -> None:
    print(f"accuracy {metrics['accuracy'] * 100:.2f}% ({metrics['grader']}), "
          f"{metrics.get('second_grader', 'second grader')} "
          f"{metrics.get('second_grader_accuracy', math.nan) * 100:.2f}% "
          f"({metrics.get('grader_disagreements', 0)} disagreements), "
          f"avg CoT {metrics['avg_cot_length']:.1f} tokens (median {metrics['median_cot_length']:.0f}, "
          f"{metrics['n_capped']} at the token cap), invalid {metrics['n_invalid']}, "
          f"batch latency {metrics['sample_latency'] or 0:.3f} s/sample")
    request = metrics.get("request_latency")
    if request:
        print(f"per-request latency over {request['n']} questions ({request['basis']}): mean {request['mean']:.3f} s, "
              f"p50 {request['p50']:.3f} s, p90 {request['p90']:.3f} s")
    elif metrics.get("request_latency_missing"):
        print(f"no per-request latency: {metrics['request_latency_missing']}")
    think = metrics.get("thinking")
    if think:
        answer = f"{think['mean_answer_tokens']:.1f}" if think["mean_answer_tokens"] is not None else "-"
        print(f"thinking outputs: {think['n']} (thinking {think['mean_thinking_tokens']:.1f} tokens on average, answer "
              f"{answer}); {think['n_unfinished']} ended inside <think> (no answer, graded incorrect)")
    print(f"wrote {predictions} and {metrics_path}")

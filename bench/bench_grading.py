"""How fast grading is: MATH-500 and GSM8K reference solutions regraded against their gold answers.

Goals: all 500 MATH-500 solutions with both graders in under 60 s on 2 cores; GSM8K with the
primary ("tokenskip") grader at 2,000 items/s or more. Math-Verify's GSM8K throughput is reported
separately, since it always needs the worker pool.

    .venv/bin/python bench/bench_grading.py [--workers N] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenskip.data.benchmarks import gsm8k_final_answer, gsm8k_solution_as_output  # noqa: E402
from tokenskip.grading.graders import Grade, Grader, GradeRequest  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def math500_requests(data: Path) -> list[GradeRequest]:
    return [
        GradeRequest(r["solution"], r["answer"], question=r["problem"])
        for r in read_jsonl(data / "math-500" / "test.jsonl")
    ]


def gsm8k_requests(data: Path) -> list[GradeRequest]:
    """Reference solutions as a model would write them: no `<<calc>>` notes, a boxed final answer."""
    return [GradeRequest(gsm8k_solution_as_output(r["answer"]), gsm8k_final_answer(r["answer"]), question=r["question"])
            for r in read_jsonl(data / "gsm8k" / "test.jsonl")]


def timed_grade(grader: Grader, requests: list[GradeRequest]) -> tuple[float, list[Grade]]:
    started = time.perf_counter()
    grades = grader.grade(requests)
    return time.perf_counter() - started, grades


def summary(grades: list[Grade]) -> str:
    parts = []
    for name in grades[0].verdicts:
        correct = sum(grade.verdicts[name] for grade in grades)
        timeouts = sum(name in grade.timeouts for grade in grades)
        parts.append(f"{name} {correct}/{len(grades)} correct, {timeouts} timed out")
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with gsm8k/ and math-500/")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    # no default file: the results always go to stdout, and to --out only where the user chooses
    parser.add_argument("--out", type=Path, help="also write the results (markdown) here")
    args = parser.parse_args()
    math500, gsm8k = math500_requests(args.data), gsm8k_requests(args.data)
    lines = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with Grader(workers=args.workers) as both:  # cold: includes starting the workers
        seconds, grades = timed_grade(both, math500)
        report(f"- MATH-500, both graders, cold pool: {seconds:.1f} s ({summary(grades)})")
        shifted = [replace(request, reference=math500[i - 1].reference) for i, request in enumerate(math500)]
        seconds, grades = timed_grade(both, shifted)
        report(
            f"- MATH-500 paired with the wrong golds (nearly every check goes to sympy), both graders, "
            f"warm pool: {seconds:.1f} s ({summary(grades)})"
        )

    with Grader(graders=["tokenskip"], workers=args.workers) as primary:
        runs = [timed_grade(primary, gsm8k) for _ in range(3)]
        seconds, grades = min(runs, key=lambda run: run[0])
        report(
            f"- GSM8K test, tokenskip grader: {len(gsm8k) / seconds:,.0f} items/s "
            f"(best of 3: {seconds:.3f} s for {len(gsm8k)}; {summary(grades)})"
        )

    with Grader("math-verify", graders=["math-verify"], workers=args.workers) as verifier:
        cold_seconds, _ = timed_grade(verifier, gsm8k)
        seconds, grades = timed_grade(verifier, gsm8k)
        report(
            f"- GSM8K test, math-verify grader: {len(gsm8k) / seconds:,.0f} items/s warm "
            f"({seconds:.2f} s; cold pool {cold_seconds:.2f} s; {summary(grades)})"
        )

    workers = args.workers or len(os.sched_getaffinity(0))
    header = [
        "# Grading benchmark",
        "",
        f"Command: `{shlex.join(sys.orig_argv)}` (from the project root)",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {workers} grading workers, "
        f"Python {platform.python_version()}",
        "",
    ]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()

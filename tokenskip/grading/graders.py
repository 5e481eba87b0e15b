"""Decide whether a model's answer matches the gold answer, for many answers, without ever hanging.

Three graders are registered by name: "tokenskip" (the default: TokenSkip's own grading as its
evaluation.py runs it, DeepSeek-Math's extraction and `eval_math`, reproduced case for case in
`original.py`), "tokenskip-lenient" (the same lineage with its plain mistakes corrected:
`parsing.py`, `equivalence.py`) and "math-verify" (Hugging Face's verifier), the independent
opinion reported beside the primary, so that a disagreement points at a grading problem rather than
a model one.

Symbolic checks can run for ever on a hostile answer such as `9^{9^{9^{9^{9}}}}`, and Python cannot
interrupt a thread stuck in C code, so `Grader` runs every slow check in a small pool of worker
processes and kills any worker that overruns the time limit. Cheap cases (identical strings after
normalisation, two plain numbers) are settled in-process, which keeps GSM8K grading fast and
starts no process at all when nothing needs one. The workers are fresh interpreters started with
`python -c`, never forks: the caller may hold a CUDA context (vLLM), and a fresh interpreter also
does not re-import the caller's `__main__` (and with it torch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tokenskip.core.errors import UsageError
from tokenskip.grading import original
from tokenskip.grading.equivalence import (
    is_equivalent,
    latex_parser,
    load_math_verify,
    math_verify_choice,
    math_verify_equivalent,
    quick_verdict,
)
from tokenskip.grading.parsing import extract_answer, extract_choice

# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class AnswerGrader:
    """One way of judging `(model_output, reference, question)`.

    `verdict` is the full, possibly slow judgement; `shortcut` settles easy items in-process
    (None: undecided); `prepare` imports and checks what `verdict` needs, once per worker;
    `extract` is the answer it reads from the output, for the record (None: it reads none itself).
    """

    verdict: Callable[[str, str, str], bool]
    shortcut: Callable[[str, str, str], bool | None] = lambda model_output, reference, question: None
    prepare: Callable[[], object] = lambda: None
    extract: Callable[[str, str, str], str] | None = None


DEFAULT_GRADER = "tokenskip"
# what metrics.json says each grader does (`grader_rules`)
GRADER_RULES: dict[str, str] = {
    "tokenskip": "TokenSkip's own grading as its evaluation.py runs it (hemingkx/TokenSkip ef02f53): DeepSeek-Math's "
                 "extract_last_single_answer (GSM8K) or extract_math_answer (MATH: every stated answer) with "
                 "strip_string, then eval_math/math_equal; reproduced case for case on tests/grading/fidelity "
                 "(docs/fidelity.md); answers are never run as Python",
    "tokenskip-lenient": "TokenSkip's lineage with its mistakes corrected: the last \\boxed{} (also \\fbox, "
                         "\\boxed 5), a number followed by words is that number, only a trailing unit is dropped, "
                         "\\cdot between digits is a product, interval brackets matter, j is not i; verdicts differ "
                         "from TokenSkip's (docs/fidelity.md)",
    "math-verify": "Hugging Face Math-Verify 0.9 on the whole output",
}
# the independent opinion run beside each primary grader unless `Grader(graders=...)` names others
SECOND_OPINION = {"tokenskip": "math-verify", "tokenskip-lenient": "math-verify", "math-verify": "tokenskip"}

_LENIENT = AnswerGrader(
    verdict=lambda model_output, reference, question: is_equivalent(extract_answer(model_output), reference, question),
    shortcut=lambda model_output, reference, question: quick_verdict(extract_answer(model_output), reference),
    prepare=latex_parser,
    extract=lambda model_output, reference, question: extract_answer(model_output),
)
_MATH_VERIFY = AnswerGrader(
    verdict=lambda model_output, reference, question: math_verify_equivalent(model_output, reference),
    prepare=load_math_verify,
)

# "math" answers (MATH, AIME, any --data-path): TokenSkip grades every answer an output states
GRADERS: dict[str, AnswerGrader] = {
    "tokenskip": AnswerGrader(
        verdict=original.grade_math,
        shortcut=original.shortcut(original.grade_math),
        prepare=latex_parser,
        extract=original.graded_math_answer,
    ),
    "tokenskip-lenient": _LENIENT,
    "math-verify": _MATH_VERIFY,
}

# "single" answers (GSM8K): TokenSkip grades the last answer an output states
SINGLE_GRADERS: dict[str, AnswerGrader] = {
    "tokenskip": AnswerGrader(
        verdict=original.grade_single,
        shortcut=original.shortcut(original.grade_single),
        prepare=latex_parser,
        extract=lambda model_output, reference, question: original.single_answer(model_output),
    ),
    "tokenskip-lenient": _LENIENT,
    "math-verify": _MATH_VERIFY,
}

# Multiple choice (GPQA): the gold answer is an option letter. "tokenskip" reads the chosen letter
# with `parsing.extract_choice`, cheaply and in-process; "math-verify" reads it its own way (in a
# worker, like any Math-Verify call), so the second grader stays an independent opinion.
_CHOICE = AnswerGrader(
    verdict=lambda model_output, reference, question: _same_choice(model_output, reference),
    shortcut=lambda model_output, reference, question: _same_choice(model_output, reference),
    extract=lambda model_output, reference, question: extract_choice(model_output),
)
CHOICE_GRADERS: dict[str, AnswerGrader] = {
    "tokenskip": _CHOICE,
    "tokenskip-lenient": _CHOICE,
    "math-verify": AnswerGrader(
        verdict=lambda model_output, reference, question: math_verify_choice(model_output, reference),
        prepare=load_math_verify,
    ),
}

# Which graders judge which answer format (`data.BENCHMARK_TABLE` gives each benchmark's format).
# Every format has the same grader names, so --grader means the same thing on every benchmark.
GRADERS_BY_FORMAT: dict[str, dict[str, AnswerGrader]] = {
    "math": GRADERS, "single": SINGLE_GRADERS, "choice": CHOICE_GRADERS,
}
ANSWER_FORMATS = tuple(GRADERS_BY_FORMAT)


def _same_choice(model_output: str, reference: str) -> bool:
    chosen = extract_choice(model_output)
    return bool(chosen) and chosen == reference.strip().upper()


def graders_for(answer_format: str) -> dict[str, AnswerGrader]:
    try:
        return GRADERS_BY_FORMAT[answer_format]
    except KeyError:
        raise UsageError(f"unknown answer format {answer_format!r}; choose from {', '.join(ANSWER_FORMATS)}") from None


# ---------------------------------------------------------------- batch grading


@dataclass(frozen=True)
class GradeRequest:
    """One answer to grade: the model's whole output against the gold answer string; `answer_format`
    ("math"; "single" for GSM8K's one final number; "choice" for an option letter) picks the graders
    (`GRADERS_BY_FORMAT`)."""

    model_output: str
    reference: str
    question: str = ""
    answer_format: str = "math"


@dataclass(frozen=True)
class Grade:
    """The outcome for one request. A check that timed out or crashed counts as incorrect and is
    named in `timeouts` or `errors` (grader name -> what went wrong)."""

    prediction: str  # the answer (or option letter) the primary grader read ("tokenskip"'s for math-verify)
    correct: bool  # the primary grader's verdict
    verdicts: dict[str, bool]
    timeouts: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)


class Grader:
    """Grades requests with every registered grader (or those named), each check under a hard
    time limit; `primary` decides `Grade.correct`. Use as a context manager, or call `close()`.
    Not thread-safe: one `grade()` call at a time."""

    def __init__(
        self,
        primary: str = DEFAULT_GRADER,
        *,
        graders: Sequence[str] | None = None,
        timeout: float = 5.0,
        workers: int | None = None,
    ) -> None:
        unknown = [name for name in (primary, *(graders or ())) if name not in GRADERS]
        if unknown:
            raise UsageError(f"unknown grader {unknown[0]!r}; choose from {', '.join(GRADERS)}")
        self.graders = tuple(graders or (primary, SECOND_OPINION[primary]))
        if primary not in self.graders:
            run = ", ".join(self.graders)
            raise UsageError(f"the primary grader {primary!r} is not among those run: {run}")
        if timeout <= 0:
            raise UsageError(f"the grading timeout must be positive, got {timeout}")
        self.primary = primary
        self._pool = _WorkerPool(workers or _available_cpus(), timeout, self.graders)

    def grade(self, requests: Iterable[GradeRequest]) -> list[Grade]:
        requests = list(requests)
        verdicts: list[dict[str, bool]] = [{} for _ in requests]
        timeouts: list[list[str]] = [[] for _ in requests]
        errors: list[dict[str, str]] = [{} for _ in requests]
        jobs, owners = [], []
        for index, request in enumerate(requests):
            graders = graders_for(request.answer_format)
            for name in self.graders:
                try:
                    settled = graders[name].shortcut(request.model_output, request.reference, request.question)
                except Exception as exc:  # a hostile answer must cost its own grade, not the batch
                    verdicts[index][name], errors[index][name] = False, _describe_error(exc)
                    continue
                if settled is None:
                    jobs.append({"grader": name, **asdict(request)})
                    owners.append((index, name))
                else:
                    verdicts[index][name] = bool(settled)
        for (index, name), outcome in zip(owners, self._pool.run(jobs)):
            verdicts[index][name] = outcome.verdict
            if outcome.timed_out:
                timeouts[index].append(name)
            if outcome.error:
                errors[index][name] = outcome.error
        return [
            Grade(
                prediction=_prediction(request, self.primary),
                correct=verdicts[i][self.primary],
                verdicts={name: verdicts[i][name] for name in self.graders},
                timeouts=tuple(timeouts[i]),
                errors=errors[i],
            )
            for i, request in enumerate(requests)
        ]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prediction(request: GradeRequest, primary: str) -> str:
    """The answer the primary grader read, for the record ("tokenskip"'s when the primary reads none
    of its own); empty if extraction itself crashes, so that the record is kept (the grader, which
    extracts the same way, records the crash as its error)."""
    graders = graders_for(request.answer_format)
    extract = graders[primary].extract or graders[DEFAULT_GRADER].extract
    try:
        return extract(request.model_output, request.reference, request.question)
    except Exception:
        return ""


def _describe_error(exc: BaseException) -> str:
    """`RecursionError: maximum recursion depth exceeded`, short, for `Grade.errors`; never raises,
    even for an exception whose message cannot be built (a huge or broken sympy object in it)."""
    try:
        message = str(exc)[:200]
    except Exception:  # any failure here would lose the record it describes
        message = "(message unavailable)"
    return f"{type(exc).__name__}: {message}"


def _available_cpus() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ---------------------------------------------------------------- worker pool

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_STARTUP_LIMIT_S = 120.0
_WORKER_MEMORY_BYTES = 4 << 30


@dataclass(frozen=True)
class _Outcome:
    verdict: bool = False
    timed_out: bool = False
    error: str | None = None


class _Worker:
    """A grading subprocess: it reads one JSON job per line on stdin and answers one line on stdout."""

    def __init__(self, graders: Sequence[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        # the worker's entry is named from the function itself, so a move or a rename fails here, at
        # import, not in a child process at run time
        boot = f"from {serve_worker.__module__} import {serve_worker.__name__}; {serve_worker.__name__}()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", boot, *graders], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        self.started = time.monotonic()
        self.ready = False
        self.job: int | None = None
        self.deadline = math.inf
        self._partial = b""

    def send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self) -> list[dict] | None:
        """The complete messages that have arrived; None once the worker has exited."""
        data = os.read(self.process.stdout.fileno(), 1 << 16)
        if not data:
            return None
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [json.loads(line) for line in lines]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


def _stop_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().stop()


class _WorkerPool:
    """Up to `size` workers, started on first need; a job that overruns its time costs its worker."""

    def __init__(self, size: int, timeout_s: float, graders: Sequence[str]) -> None:
        self.size = max(1, size)
        self.timeout_s = timeout_s
        self.graders = tuple(graders)
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        # kills the workers even if close() is never called (garbage collection, interpreter exit)
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def run(self, jobs: list[dict]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(jobs)
        queue = deque(range(len(jobs)))
        try:
            while queue or any(worker.job is not None for worker in self._workers):
                self._start_workers(len(queue))
                self._dispatch(queue, jobs)
                self._collect(outcomes)
                self._expire(outcomes)
        except BaseException:
            self.close()  # workers may be mid-job; their late answers must not reach the next run
            raise
        return outcomes  # type: ignore[return-value]  # every job has an outcome by now

    def close(self) -> None:
        for worker in self._workers:
            self._selector.unregister(worker.process.stdout)
        self._finalizer()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def _start_workers(self, queued: int) -> None:
        busy = sum(worker.job is not None for worker in self._workers)
        while len(self._workers) < min(self.size, busy + queued):
            worker = _Worker(self.graders)
            self._workers.append(worker)
            self._selector.register(worker.process.stdout, selectors.EVENT_READ, worker)

    def _retire(self, worker: _Worker) -> None:
        self._selector.unregister(worker.process.stdout)
        self._workers.remove(worker)
        worker.stop()

    def _dispatch(self, queue: deque[int], jobs: list[dict]) -> None:
        for worker in list(self._workers):
            if not queue:
                return
            if worker.ready and worker.job is None:
                job = queue.popleft()
                try:
                    worker.send({"id": job, **jobs[job]})
                except OSError:  # it died while idle (e.g. its parent thread exited): retry elsewhere
                    queue.appendleft(job)
                    self._retire(worker)
                    continue
                worker.job, worker.deadline = job, time.monotonic() + self.timeout_s

    def _collect(self, outcomes: list[_Outcome | None]) -> None:
        now = time.monotonic()
        deadlines = [w.deadline if w.ready else w.started + _STARTUP_LIMIT_S for w in self._workers]
        wait_s = max(0.0, min([*deadlines, now + 1.0]) - now)  # wake at least once a second regardless
        for key, _ in self._selector.select(wait_s):
            worker: _Worker = key.data
            messages = worker.receive()
            if messages is None:
                self._worker_exited(worker, outcomes)
                continue
            for message in messages:
                if "fatal" in message:
                    raise UsageError(message["fatal"])
                if message.get("ready"):
                    worker.ready = True
                elif message.get("id") == worker.job:
                    verdict, error = message.get("verdict", False), message.get("error")
                    outcomes[worker.job] = _Outcome(verdict=verdict, error=error)
                    worker.job, worker.deadline = None, math.inf

    def _worker_exited(self, worker: _Worker, outcomes: list[_Outcome | None]) -> None:
        if not worker.ready:
            raise RuntimeError("a grading worker exited while starting; its error message is above")
        if worker.job is not None:
            outcomes[worker.job] = _Outcome(error=f"grading worker died (exit code {worker.process.poll()})")
        self._retire(worker)

    def _expire(self, outcomes: list[_Outcome | None]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.job is not None and now >= worker.deadline:
                outcomes[worker.job] = _Outcome(timed_out=True)
                self._retire(worker)
            elif not worker.ready and now >= worker.started + _STARTUP_LIMIT_S:
                raise RuntimeError(f"a grading worker did not start within {_STARTUP_LIMIT_S:.0f} s")


# ---------------------------------------------------------------- inside a worker


def serve_worker() -> None:
    """Main loop of a worker process (see `_Worker`); the graders to prepare are in `sys.argv`."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print() must not corrupt replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops us
    _die_with_parent()
    _cap_memory()

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        for name in sys.argv[1:]:
            for graders in GRADERS_BY_FORMAT.values():
                graders[name].prepare()
    except UsageError as exc:
        reply({"fatal": str(exc)})
        return
    reply({"ready": True})
    for line in sys.stdin.buffer:
        job = json.loads(line)
        try:
            graders = GRADERS_BY_FORMAT[job.get("answer_format", "math")]
            verdict = graders[job["grader"]].verdict(job["model_output"], job["reference"], job["question"])
            reply({"id": job["id"], "verdict": bool(verdict)})
        except Exception as exc:  # RecursionError, MemoryError, a library bug: incorrect, not fatal
            reply({"id": job["id"], "error": _describe_error(exc)})


def _die_with_parent() -> None:
    """Have Linux kill this worker when the process that started it dies, so that a check stuck in
    C code cannot outlive it as an orphan (an idle worker exits anyway when its stdin closes)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _cap_memory() -> None:
    """Turn a runaway expression's memory use into a MemoryError instead of an OOM kill."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, _WORKER_MEMORY_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))

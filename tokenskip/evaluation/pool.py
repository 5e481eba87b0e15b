"""Runs too small to fill the slots on their own share one queue (the transformers backend's continuous batching).

A sweep of short runs (`make demo`: 32 questions a run on 48 slots) leaves slots idle: each run is one call that
drains to its longest answer while the next run waits. Greedy continuous batching decodes every request as it would
alone, so the pending prompts of several runs on the loaded model can be generated in one call; each run then
takes its own completions from it where it would have generated them, and writes its folder as before. Outputs are
the same, byte for byte (tests/evaluation/test_pool.py; bench/bench_pooling.py measured 1.41-1.52x on the demo's
adapter sweep). A pooled run's settings and prompts are planned twice, here and when it runs: a few milliseconds
for the prompts that fit one call.

Which runs share: the runs of one call on the same weights (the same adapter, or none) whose budget is known when
the group forms (a budgeted baseline's budget scales the original run's mean CoT: it joins a later group),
that have not started (no predictions.jsonl: a resumed run goes its own way) and whose prompts fit in one of its
chunks (a larger run fills the slots by itself, and pooling it would hold more unwritten work than a crash should
lose). Only the greedy continuous path of the transformers backend pools, one process, no shards.

Time: a pooled request's latency runs from taking its slot to its last token (the time it queued behind other runs'
requests is theirs; the runs' requests are interleaved so that each run meets the same crowd), a basis of its own
that report.py never compares with a run's queued-to-last-token latency (it falls back to seconds per question);
each request is charged the pooled call's wall time in proportion to its
tokens, and a run's batch time is the sum of its requests' charges (the view's charged_clock below), so tokens/s
and seconds per sample stay what the run cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokenskip.backends import Completion
from tokenskip.backends.slots import POOLED_LATENCY_BASIS
from tokenskip.core.errors import UsageError
from tokenskip.core.layout import METRICS, PREDICTIONS, samples_dir
from tokenskip.evaluation.config import EvalConfig, run_dir


@dataclass
class _Ready:
    completion: Completion
    seconds: float  # its share of the pooled call's wall time


class Pool:
    """Completions generated ahead for the runs of a group, keyed by (prompt, token cap)."""

    def __init__(self) -> None:
        self.ready: dict[tuple[str, int], list[_Ready]] = {}
        self.runs: set[int] = set()  # the plan positions whose requests were pooled

    def fill(self, backend, requests: list[tuple[str, int]]) -> None:
        start = time.perf_counter()
        completions = backend.generate_pooled([prompt for prompt, _ in requests], [cap for _, cap in requests])
        wall = time.perf_counter() - start
        total = sum(completion.n_tokens for completion in completions) or 1
        for key, completion in zip(requests, completions):
            self.ready.setdefault(key, []).append(_Ready(completion, wall * completion.n_tokens / total))

    def take(self, prompt: str, cap: int) -> _Ready | None:
        found = self.ready.get((prompt, cap))
        return found.pop(0) if found else None

    def view(self, backend) -> PooledView:
        return PooledView(backend, self)


class PooledView:
    """`backend`, answering from the pool where the pool has the answer and generating the rest (e.g. budget
    forcing's second phase). `charged_clock()` runs on wall time plus the charges of the answers it took from the
    pool."""

    def __init__(self, backend, pool: Pool) -> None:
        self._backend = backend
        self._pool = pool
        self._charged = 0.0
        self._took = False  # whether any answer came from the pool (the run was one of a pooled group)

    @property
    def latency_basis(self) -> str:
        return POOLED_LATENCY_BASIS if self._took else self._backend.latency_basis

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def charged_clock(self) -> float:
        return time.perf_counter() + self._charged

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        cap = max_new_tokens or self._backend.settings.max_new_tokens
        found = [self._pool.take(prompt, cap) for prompt in prompts]
        completions: list[Completion | None] = [None if ready is None else ready.completion for ready in found]
        self._charged += sum(ready.seconds for ready in found if ready is not None)
        self._took = self._took or any(ready is not None for ready in found)
        missing = [i for i, completion in enumerate(completions) if completion is None]
        if missing:
            generated = self._backend.generate([prompts[i] for i in missing], max_new_tokens,
                                               ids=[ids[i] for i in missing] if ids else None)
            for i, completion in zip(missing, generated):
                completions[i] = completion
        return completions


def poolable_call(call: EvalConfig) -> bool:
    """Whether this call's runs may share a queue: greedy continuous batching, one process, unsharded."""
    from tokenskip.backends.hf import continuous
    from tokenskip.models.loading import resolve_device

    return (call.backend == "hf" and call.n_samples == 1 and call.shards.count == 1 and not call.shards.merge
            and call.data_parallel_size == 1 and continuous(call.temperature, resolve_device(call.device),
                                                            call.batching))


def pending_requests(run: EvalConfig, examples, shared) -> list[tuple[str, int]] | None:
    """A run's requests (prompt, token cap) if it can join a pool now, else None."""
    from tokenskip.evaluation.run import plan_job, run_settings

    folder = samples_dir(run_dir(run))
    if (folder / PREDICTIONS).exists() or (folder / METRICS).exists():
        return None  # started or finished: it resumes (or reports) on its own
    try:
        settings = run_settings(run, shared)
    except UsageError:
        return None  # a budget that needs a run not made yet: it joins a later group
    job = plan_job(run, examples, shared, settings.max_new_tokens, settings.budget)
    if not job.examples or len(job.examples) > job.chunk_size:
        return None
    return [(job.prompt_of[example.id], settings.max_new_tokens) for example in job.examples]


def fill_group(pool: Pool, planned: list[EvalConfig], start: int, examples, shared) -> None:
    """Pool the requests of the runs from `start` on, on the same weights, that can join now (a run that cannot —
    started, or its budget waiting for the original run — is passed over and may join a later group); nothing
    for a group of one."""
    group: list[tuple[int, list[tuple[str, int]]]] = []
    for index in range(start, len(planned)):
        run = planned[index]
        if run.adapter_path != planned[start].adapter_path:
            break  # plan() runs the base model's runs first, the adapter's after
        if index in pool.runs:
            continue
        requests = pending_requests(run, examples, shared)
        if requests is not None:
            group.append((index, requests))
    if len(group) < 2:
        return
    backend = shared.backend_for(planned[start])
    if not hasattr(backend, "generate_pooled"):
        return
    # the runs' requests interleaved, one of each run in turn: every run's requests then meet the same crowd in the
    # slots over the call's life (the full queue, then its draining tail), so their in-slot latencies compare; run
    # after run, the last run's requests would decode alone at the end and look faster than they are
    longest = max(len(requests) for _, requests in group)
    pool.fill(backend, [requests[i] for i in range(longest) for _, requests in group if i < len(requests)])
    pool.runs |= {index for index, _ in group}
    print(f"{len(group)} runs share one queue: {sum(len(requests) for _, requests in group)} prompts")

"""--data-parallel-size N: N engine replicas on one node, as vLLM's offline data-parallel example
runs them: one process per rank, each with its own devices (TP GPUs; on a CPU, its own cores) and
its own share of the prompts, with the whole model and the LoRA adapter in every rank.

A rank is the call itself run as one shard (--num-shards N --shard-index r, tokenskip/core/shards.py):
it writes only its shard folder, resumes when rerun, and the parent merges the shards once all
have finished, so the files are exactly those of one process. The replicas are independent
engines (vLLM's way for dense models); nothing here schedules work between them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tokenskip.backends import CPU_ENGINES_VARIABLE
from tokenskip.core.devices import visible_gpus
from tokenskip.core.errors import UsageError

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def rank_environments(size: int, tensor_parallel: int, gpus: Sequence[str], cores: Sequence[int]) -> list[dict]:
    """Each rank's devices: TP consecutive GPUs, or (no GPU) an equal share of this process's cores."""
    if gpus:
        needed = size * tensor_parallel
        if len(gpus) < needed:
            raise UsageError(f"--data-parallel-size {size} x --tensor_parallel_size {tensor_parallel} needs {needed} "
                             f"GPUs, and {len(gpus)} are visible (CUDA_VISIBLE_DEVICES={','.join(gpus)})")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * tensor_parallel:(r + 1) * tensor_parallel])}
                for r in range(size)]
    if len(cores) < size:
        raise UsageError(f"--data-parallel-size {size} on a CPU needs a core per rank; this process has "
                         f"{len(cores)}")
    share = len(cores) // size
    environments = []
    for r in range(size):
        mine = ",".join(str(core) for core in cores[r * share:(r + 1) * share])
        # vLLM-CPU binds its threads to these cores, torch (hf backend) uses as many threads
        environments.append({"CUDA_VISIBLE_DEVICES": "", "VLLM_CPU_OMP_THREADS_BIND": mine,
                             "OMP_NUM_THREADS": str(share), "TOKENSKIP_RANK_CORES": mine,
                             CPU_ENGINES_VARIABLE: str(size)})  # the ranks' KV caches share the memory
    return environments


def rank_command(entry: Sequence[str], argv: Sequence[str], rank: int, size: int) -> list[str]:
    """The call again, as rank `rank`: the last of a repeated flag wins in argparse."""
    return [*entry, *argv, "--data-parallel-size", "1", "--num-shards", str(size), "--shard-index", str(rank)]


def run_ranks(entry: Sequence[str], argv: Sequence[str], *, size: int, tensor_parallel: int, log_dir: Path) -> None:
    """Start the N ranks and wait for all; rank 0 prints to the terminal, the others to
    `log_dir/rank-{r}.log`. A rank that fails is named, with the tail of its output."""
    environments = rank_environments(size, tensor_parallel, visible_gpus(), sorted(os.sched_getaffinity(0)))
    log_dir.mkdir(parents=True, exist_ok=True)
    processes, logs = [], []
    print(f"data parallel: {size} ranks" + (f", logs of ranks 1..{size - 1} in {log_dir}" if size > 1 else ""))
    for rank, extra in enumerate(environments):
        env = {**os.environ, **extra}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        cores = extra.get("TOKENSKIP_RANK_CORES")
        log = None if rank == 0 else open(log_dir / f"rank-{rank}.log", "w", encoding="utf-8")  # noqa: SIM115
        logs.append(log)
        processes.append(subprocess.Popen(
            rank_command(entry, argv, rank, size), env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
            preexec_fn=(lambda cores=cores: os.sched_setaffinity(0, [int(c) for c in cores.split(",")]))
            if cores else None))
    codes = [process.wait() for process in processes]
    for log in logs:
        if log:
            log.close()
    failed = [rank for rank, code in enumerate(codes) if code]
    if failed:
        rank = failed[0]
        where = "above" if rank == 0 else str(log_dir / f"rank-{rank}.log")
        tail = "" if rank == 0 else " | ".join(
            (log_dir / f"rank-{rank}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-2:])
        raise UsageError(f"data-parallel rank {rank} of {size} failed (exit code {codes[rank]}; output {where}"
                         + (f": {tail}" if tail else "") + "); run the same command again: "
                         "the finished ranks' answers are kept and each rank resumes")


def entry_command(module: str) -> list[str]:
    """How a rank starts the stage: this interpreter, the stage's module."""
    return [sys.executable, "-m", module]

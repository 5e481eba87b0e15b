"""--backend ray: batch inference over a Ray cluster through Ray Data's LLM API (`ray.data.llm`).

Each generate call is one Ray Data job: the prompts (token ids) become a dataset, a vLLM engine
processor runs them on `--data-parallel-size` engine replicas (each on TP x PP GPUs, anywhere in
the cluster; on a CPU, on its share of the cores), and the answers come back in prompt order. Ray
Data does the placing, the streaming and the retries of a lost replica; the run (grading, files,
resume, merge) is the same as with the other backends. The engine arguments are the vllm
backend's (`engine_arguments`), so both start the same engine and, greedy on the same device,
answer the same tokens.

A Ray Data job starts its replicas and stops them at its end, so every chunk of prompts loads the
model once per replica: the chunk is large by default (CHUNK_SIZE) so that loading is a small share
of a chunk's time, and a killed run loses at most the chunk in flight.

Ray is found through RAY_ADDRESS (a running cluster: `ray start --head` on one node, `ray start
--address ...` on the others); without it, a local Ray instance on this machine's cores.
"""

from __future__ import annotations

import math
import os

from tokenskip.backends import Completion, DecodingSettings, base_model_view, ray_available, request_seed
from tokenskip.backends.vllm import (
    LATENCY_BASIS,
    cpu_environment,
    engine_arguments,
    sampling_arguments,
    stats_latency,
)
from tokenskip.core.errors import UsageError
from tokenskip.models.loading import stop_token_ids

# prompts per Ray Data job (see the module's note): 15k questions are two jobs
CHUNK_SIZE = 8192
# rows handed to one replica at a time: small enough that every replica gets work on a short chunk
MAX_ROWS_PER_BATCH = 64
# how long a job waits for all its replicas to start before it hands out any rows. Without the
# wait, the first replica up takes every block of a short chunk (seen here: 2 replicas started, one
# answered all 6 prompts), and a cluster that can never place N replicas waits for ever; with it,
# rows spread over the N replicas, and a missing resource is an error after this many seconds
REPLICA_START_TIMEOUT_S = 1800
_ROW = "tokenskip_row"  # the prompt's index in its chunk, which puts the answers back in order


def replica_placement(on_cpu: bool, cores: int, replicas: int) -> dict | None:
    """Ray resources of one replica on a CPU: an equal share of the cores (Ray Data would otherwise
    ask each for a GPU). None on GPUs: Ray Data reserves TP x PP GPUs per replica itself."""
    if not on_cpu:
        return None
    if cores < replicas:
        raise UsageError(f"--backend ray --data-parallel-size {replicas} on a CPU needs a core per replica; "
                         f"Ray sees {cores}")
    return {"bundles": [{"CPU": max(1, (cores - 1) // replicas)}]}  # one CPU left for Ray Data's stages


def replica_environment(environ: dict, on_cpu: bool, replicas: int, cores: int) -> dict:
    """Variables every replica's engine starts with (a variable the user set stays the user's)."""
    if not on_cpu:
        return {}
    added = cpu_environment(environ, cores // max(1, replicas))
    if replicas > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        # replicas share the node: each uses the threads Ray gives it (OMP_NUM_THREADS = its CPUs)
        # instead of binding itself to every core
        added["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return added


def rows_per_batch(prompts: int, replicas: int) -> int:
    return max(1, min(MAX_ROWS_PER_BATCH, math.ceil(prompts / replicas)))


class RayDataBackend:
    name = "ray"
    latency_basis = LATENCY_BASIS

    def __init__(self, model_path: str, tokenizer, *, settings: DecodingSettings, replicas: int,
                 tensor_parallel_size: int, pipeline_parallel_size: int, dtype: str, on_cpu: bool,
                 adapter_path: str | None = None, adapter_rank: int = 8, context: int | None = None,
                 enforce_eager: bool = False, chunk_size: int | None = None,
                 gpu_memory_utilization: float | None = None):
        if not ray_available():
            raise UsageError("--backend ray needs Ray beside vLLM: `make setup-ray` installs it into .venv-vllm "
                             "(requirements-ray.txt); run with .venv-vllm/bin/python")
        import ray
        import ray.data

        self.tokenizer = tokenizer
        self.dtype = dtype
        self.settings = settings
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.replicas = replicas
        self.model_path = model_path
        self.adapter_path = adapter_path
        self.stop_ids = stop_token_ids(tokenizer)
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            # one logical CPU more than the cores, for Ray Data's own light stages (rows in, rows out)
            local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": len(os.sched_getaffinity(0)) + 1}
            ray.init(include_dashboard=False, **local)
        data_context = ray.data.DataContext.get_current()
        if data_context.wait_for_min_actors_s <= 0:  # Ray's default; a value the user set is kept
            data_context.wait_for_min_actors_s = REPLICA_START_TIMEOUT_S
        self.start_timeout = data_context.wait_for_min_actors_s
        resources = ray.cluster_resources()
        cores = int(resources.get("CPU", 1))
        needed = replicas * tensor_parallel_size * pipeline_parallel_size
        if not on_cpu and resources.get("GPU", 0) < needed:  # Ray Data would wait for them for ever
            raise UsageError(f"--backend ray: {replicas} replicas x TP {tensor_parallel_size} x PP "
                             f"{pipeline_parallel_size} need {needed} GPUs, and the Ray cluster has "
                             f"{int(resources.get('GPU', 0))}: start its nodes first, or ask for fewer")
        self.engine = engine_arguments(
            model_path, tokenizer, settings=settings, dtype=dtype, on_cpu=on_cpu,
            tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
            adapter_path=adapter_path, adapter_rank=adapter_rank, context=context, enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            # a local instance puts every replica on this machine (a cluster's CPU nodes: at worst the same)
            engines_sharing_memory=replicas)
        self.engine.pop("model")  # Ray Data's `model_source`
        self.placement = replica_placement(on_cpu, cores, replicas)
        self.environment = replica_environment(dict(os.environ), on_cpu, replicas, cores)

    def _processor(self, batch_size: int):
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        config = vLLMEngineProcessorConfig(
            model_source=self.model_path, engine_kwargs=dict(self.engine), batch_size=batch_size,
            concurrency=(self.replicas, self.replicas),  # a fixed pool: all N start
            placement_group_config=self.placement,
            runtime_env={"env_vars": self.environment} if self.environment else None,
            # the prompts arrive as token ids, built by tokenskip.prompting as for every backend
            chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, log_engine_metrics=False)
        return build_processor(config)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        import ray

        budget = int(max_new_tokens or self.settings.max_new_tokens)
        ids = ids if ids is not None else [str(i) for i in range(len(prompts))]
        # a row whose "model" is not the base model is answered with that LoRA adapter, on every replica
        model = self.adapter_path or self.model_path
        rows = [{_ROW: i, "model": model,
                 "tokenized_prompt": self.tokenizer(prompt, add_special_tokens=False).input_ids,
                 "sampling_params": sampling_arguments(self.settings, budget, request_seed(self.settings.seed, rid),
                                                       self.stop_ids)}
                for i, (prompt, rid) in enumerate(zip(prompts, ids))]
        batch = rows_per_batch(len(rows), self.replicas)
        # one block per batch: a replica takes whole blocks, so one block would leave the others idle
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch))
        try:
            answered = sorted(self._processor(batch)(dataset).take_all(), key=lambda row: row[_ROW])
        except ray.exceptions.GetTimeoutError as error:  # raised by the wait set in __init__
            raise UsageError(f"--backend ray: {self.replicas} replicas did not all start within "
                             f"{self.start_timeout} s; the Ray cluster lacks the CPUs/GPUs (or memory) they ask "
                             "for: add nodes, or lower --data-parallel-size") from error
        if [row[_ROW] for row in answered] != list(range(len(rows))):
            raise RuntimeError(f"Ray Data returned {len(answered)} answers for {len(rows)} prompts")
        return [self._completion(row, budget) for row in answered]

    def _completion(self, row: dict, budget: int) -> Completion:
        tokens = list(row["generated_tokens"])
        stats = row.get("metrics") or {}
        # Ray Data keeps no finish reason: a budget-long answer that does not end on a stop token was capped
        capped = len(tokens) >= budget and (not tokens or tokens[-1] not in self.stop_ids)
        return Completion(text=row["generated_text"], n_tokens=len(tokens), capped=capped,
                          latency_s=stats_latency(stats.get("queued_ts"), stats.get("last_token_ts")))

    def without_adapter(self) -> RayDataBackend:
        """The same replicas, answering with the base model (rows without the adapter's name)."""
        return base_model_view(self, adapter_path=None)

    def close(self) -> None:
        import ray

        if self._started_ray and ray.is_initialized():
            ray.shutdown()

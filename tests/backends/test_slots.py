"""Continuous batching in the transformers backend: every request gets the tokens it would get alone,
whatever the slots, refills and compaction around it."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import Cache

from testkit.tiny_models import greedy_alone
from tokenskip.backends import DecodingSettings
from tokenskip.backends.hf import HFBackend, PreallocatedLayer, prompts_per_call
from tokenskip.backends.slots import LATENCY_BASIS, SlotDecoder
from tokenskip.models.loading import load_tokenizer

PROMPTS = [f"<|im_start|>user\nQuestion {i}{' and more words' * (i % 4)}?<|im_end|>\n" for i in range(9)]


def decoder_for(backend: HFBackend, slots: int, stops: list[int]) -> SlotDecoder:
    layers = backend.model.config.num_hidden_layers
    return SlotDecoder(backend.model, slots=slots, stop_ids=stops, pad_id=backend.tokenizer.pad_token_id,
                       device="cpu", prefill_cache=lambda rows, width: Cache(
                           layers=[PreallocatedLayer(width) for _ in range(layers)]))


@pytest.fixture(scope="module")
def varied_lm_dir(tmp_path_factory, smollm2_dir):
    """The tiny Llama with large random weights: varied greedy tokens, so stop tokens can end answers unevenly."""
    from transformers import AutoTokenizer

    from testkit.tiny_models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("varied-llama"), AutoTokenizer.from_pretrained(smollm2_dir),
                           init_std=1.0)


@pytest.fixture()
def backend(varied_lm_dir):
    tokenizer = load_tokenizer(str(varied_lm_dir))
    return HFBackend(str(varied_lm_dir), tokenizer, settings=DecodingSettings(max_new_tokens=12), batch_size=3,
                     device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("slots", [1, 2, 4, 16])
def test_each_request_gets_its_tokens_alone(backend, slots):
    """Uneven answers (stop tokens picked from the requests' own continuations, one at the first token) make
    slots free at different steps: refills, a request that ends at its first token, and compaction once the
    queue is empty all happen, and no request's tokens change."""
    budget = 12
    prompts = [backend.tokenizer(prompt, add_special_tokens=False).input_ids for prompt in PROMPTS]
    free_running = [greedy_alone(backend.model, prompt, budget, set()) for prompt in prompts]
    stops = {free_running[1][0], free_running[2][2]}
    expected = [greedy_alone(backend.model, prompt, budget, stops) for prompt in prompts]
    lengths = {len(tokens) for tokens in expected}
    assert 1 in lengths and budget in lengths and len(lengths) >= 3  # the uneven answers this test is about
    requests = decoder_for(backend, slots, sorted(stops)).generate(prompts, budget)
    assert [request.tokens for request in requests] == expected
    assert all(request.finished_at is not None and request.finished_at > 0 for request in requests)


def test_latency_is_queued_to_last_token(backend):
    """A request's latency counts from the call's start (its wait for a slot included) to its last token: with one
    slot, each request finishes after the one before it."""
    prompts = [backend.tokenizer(prompt, add_special_tokens=False).input_ids for prompt in PROMPTS[:4]]
    requests = decoder_for(backend, 1, [backend.tokenizer.eos_token_id]).generate(prompts, 6)
    times = [request.finished_at for request in requests]
    assert times == sorted(times) and times[0] < times[-1]


def test_the_backend_batches_greedy_cpu_runs_continuously(backend, varied_lm_dir):
    assert backend.decoder is not None and backend.latency_basis == LATENCY_BASIS
    assert backend.chunk_size == prompts_per_call(3, 0.0, "cpu") == 12  # prompts for the slots to take
    sampled = HFBackend(str(varied_lm_dir), backend.tokenizer, settings=DecodingSettings(max_new_tokens=4,
                        temperature=0.7), batch_size=3, device="cpu", dtype=torch.float32)
    assert sampled.decoder is None and sampled.chunk_size == 3  # sampling keeps the static, seeded batch
    assert prompts_per_call(3, 0.0, "cuda") == 3

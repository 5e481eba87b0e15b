"""The transposed decoding-step products (tokenskip/backends/skinny.py): taken only where they equal PyTorch's
linear bit for bit, and the transformers backend's outputs unchanged with them."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from tokenskip.backends import DecodingSettings, skinny
from tokenskip.backends.hf import HFBackend
from tokenskip.models.loading import load_tokenizer


@pytest.mark.parametrize("bias", [False, True])
def test_every_product_equals_linear_bit_for_bit(bias):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(96, 160, bias=bias), torch.nn.Linear(160, 64, bias=bias))
    assert skinny.install(model) == 2
    for rows, positions in ((1, 1), (5, 1), (12, 1), (16, 1), (48, 1), (48, 1), (161, 1), (400, 1), (4, 8)):
        x = torch.randn(rows, positions, 96)
        with torch.inference_mode():
            expected = functional.linear(functional.linear(x, model[0].weight, model[0].bias),
                                         model[1].weight, model[1].bias)
            assert torch.equal(model(x), expected), rows
    verdicts = skinny.verdicts_of(model)
    # only the skinny row counts of one position each were tried, once per shape and row count (4 × 8 is a
    # prefill's 32 rows: never)
    assert {key[2] for key in verdicts} == {12, 16, 48}
    assert {(key[0], key[1]) for key in verdicts} == {(96, 160), (160, 64)}


def test_the_transposed_product_is_used_once_verified_and_never_when_refuted(monkeypatch):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32, bias=False)
    skinny.install(layer)
    x = torch.randn(20, 1, 64)
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *args: products.append(1) or real_mm(*args))
    with torch.inference_mode():
        first = layer(x)  # computed both ways, compared; linear's result returned
        second = layer(x)
    assert torch.equal(first, second) and torch.equal(first, functional.linear(x, layer.weight))
    key = (64, 32, 20, False, torch.float32)
    assert skinny.verdicts_of(layer)[key] is True and len(products) == 2

    # a shape whose transposed product disagreed keeps linear, without computing the other one again
    layer.forward.verdicts[key] = False
    products.clear()
    with torch.inference_mode():
        assert torch.equal(layer(x), first)
    assert products == []


def test_the_backend_decodes_the_same_tokens_with_and_without(tiny_lm_dir):
    tokenizer = load_tokenizer(str(tiny_lm_dir))
    prompts = [f"<|im_start|>user\nQuestion {i}{' and more words' * (i % 5)}?<|im_end|>\n" for i in range(40)]
    outputs = {}
    for flag in (False, True):
        backend = HFBackend(str(tiny_lm_dir), tokenizer, settings=DecodingSettings(max_new_tokens=10),
                            batch_size=16, device="cpu", dtype=torch.float32, skinny_products=flag)
        outputs[flag] = [(c.text, c.n_tokens) for c in backend.generate(prompts)]
        if flag:
            taken = {key[2]: verdict for key, verdict in skinny.verdicts_of(backend.model).items()}
            assert 16 in taken  # the decoding steps' 16 rows were checked (and the answer used from then on)
        else:
            assert skinny.verdicts_of(backend.model) == {}
    assert outputs[True] == outputs[False]

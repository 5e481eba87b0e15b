"""Faster decoding-step products on a CPU, bit for bit the same: `W @ xᵀ` instead of `x @ Wᵀ`.

A decoding step multiplies a few dozen rows (one per slot) by every weight matrix. For such skinny
products PyTorch's CPU `linear` (MKL sgemm with the weight as the wide operand) runs at a quarter to a
half of the cores' peak; the same product asked for the other way round, `(W @ xᵀ)ᵀ`, runs 1.2–1.6×
faster (the LM head, 49,152 × 576 for the embedded model, 1.5×), measured in bench/README.md. Both
orientations reduce each output element over the same inner dimension in the same order, so the
results are equal bit for bit — for the row counts and kernels where they are, which is decided by
looking: the first product of each shape and row count is computed both ways and compared, and the
other orientation is used from then on only if every bit agreed (that first call returns `linear`'s
own result either way). MKL picks its kernel by shape, so one comparison per shape and row count
stands for all of them; with this torch, row counts 2–11 take another kernel and do not agree, and
above ~200 rows `linear` is the faster one, so neither is asked. Only products with one position per
row are asked (decoding steps, and the LM head's last position after a prefill): a prefill's row
count is its prompts' tokens, new at almost every refill, and each new one would cost a check.
"""

from __future__ import annotations

import torch
from torch.nn import functional

# the row counts for which the transposed product is tried (measured: faster from 12 to ~200 rows)
MIN_ROWS = 12
MAX_ROWS = 160


class SkinnyLinear:
    """A `forward` for one torch.nn.Linear (installed per module by `install`). `verdicts`: (in, out, rows, bias,
    dtype) -> whether the transposed product equalled `linear` bit for bit, shared by every module of the model
    (the answer depends on the shapes, not on the weights)."""

    def __init__(self, module: torch.nn.Linear, verdicts: dict):
        self.module = module
        self.verdicts = verdicts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.module.weight, self.module.bias
        # one position per row: a decoding step (or the LM head after a prefill); a prefill's products have as many
        # rows as prompt tokens, a new count almost every time, each of which would cost a check
        rows = x.shape[0] if x.dim() >= 2 and x[..., 0].numel() == x.shape[0] else 0
        if not MIN_ROWS <= rows <= MAX_ROWS or x.dtype != weight.dtype or x.device.type != "cpu":
            return functional.linear(x, weight, bias)
        features = weight.shape[1]
        key = (features, weight.shape[0], rows, bias is not None, x.dtype)
        verdict = self.verdicts.get(key)
        if verdict is False:
            return functional.linear(x, weight, bias)
        flat = x.reshape(rows, features)
        if bias is None:
            product = torch.mm(weight, flat.t())
        else:
            product = torch.addmm(bias[:, None], weight, flat.t())
        result = product.t().contiguous().view(*x.shape[:-1], weight.shape[0])
        if verdict is None:
            reference = functional.linear(x, weight, bias)
            self.verdicts[key] = torch.equal(reference, result)
            return reference
        return result


def install(model: torch.nn.Module) -> int:
    """Route every plain torch.nn.Linear of `model` through SkinnyLinear; the number of modules routed.
    For inference only (the transposed product is not written for autograd)."""
    verdicts: dict = {}
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.forward = SkinnyLinear(module, verdicts)
            count += 1
    return count


def verdicts_of(model: torch.nn.Module) -> dict:
    """The shapes checked so far and whether the transposed product was taken for them (for benches, tests)."""
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if isinstance(forward, SkinnyLinear):
            return dict(forward.verdicts)
    return {}

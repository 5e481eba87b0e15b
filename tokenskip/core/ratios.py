"""γ, the compression ratio: the share of a CoT's tokens kept. Its range, default grid and spelling.

Stage 2 compresses at γ in (0, 1): at 1 nothing would be pruned, so there is no file to make.
Stage 5 and the CTS scorer also take γ = 1, "the CoT as it was" (the adapter's uncompressed mode).
The original wrote γ with Python's `str(float)`, in folder names and in the prompt the model is
trained on, so `ratio_tag` is that and nothing else: "0.5", "1.0".
"""

from __future__ import annotations

from typing import Sequence

from tokenskip.core.errors import UsageError

DEFAULT_RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)  # the paper's γ grid (stage 2, stage 3, the report's adherence)


def ratio_tag(ratio: float) -> str:
    """γ as the original wrote it in folder names and prompts: Python's `str(float)`."""
    return str(float(ratio))


def check_ratio(ratio: float, *, what: str = "compression ratio", keep_all: bool = False) -> float:
    """`ratio` if it is in (0, 1) — or (0, 1] with `keep_all` — else a one-line UsageError naming `what`."""
    if 0.0 < ratio < 1.0 or (keep_all and ratio == 1.0):
        return float(ratio)
    interval = "(0, 1]" if keep_all else "(0, 1)"
    raise UsageError(f"{what} must be in {interval}, got {ratio}")


def parse_ratios(ratios: Sequence[float], *, keep_all: bool = False) -> list[float]:
    """Checked, unique, largest first: the order stage 2 writes and stage 3 reads its ratio files."""
    return sorted({check_ratio(r, what="compression ratios", keep_all=keep_all) for r in ratios}, reverse=True)

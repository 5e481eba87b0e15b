"""Conditional Token Selection as its authors ran it: llmlingua's LongLLMLingua call, unchanged.

The CTS authors' script (Faustrazor/Not-All-Thinking-Tokens, `CTS/CTS_data_get.py`) cuts each
thinking text to 5,000 tokens of the target model's tokenizer, then calls llmlingua's causal
`PromptCompressor` with the reference model as

    compress_prompt(context=thinking, question=prompt, instruction="", concate_question=False, rate=γ,
                    use_context_level_filter=False, use_token_level_filter=True, condition_compare=True,
                    condition_in_question="after", iterative_size=1800, force_reserve_digit=True,
                    rank_method="longllmlingua")

and keeps `compressed_prompt`. `AuthorsCTSScorer` returns exactly that text (tests/test_cts_authors.py
compares it word for word with the call itself): it runs llmlingua's own code, and only the
model's forward passes are shared between ratios.

What that call computes (llmlingua 0.2.2, llmlingua/prompt_compressor.py; line numbers of that file):

- The condition is the question, put before the thinking (`prefix + "\\n\\n" + thinking`, l. 659-677);
  `condition_in_question="after"` only matters to the context- and sentence-level filters, which are
  off. Token x_i is scored by log p(x_i | question, x_<i) - log p(x_i | x_<i) (`self_loss - loss`,
  l. 1417-1424, the second pass reading the thinking alone), and each position is kept or dropped by
  the score of the token after it (`need_idx[start + j]` takes score j, that of token start + j + 1).
- `force_reserve_digit` is read only by the LLMLingua-2 path (l. 550): digits are not protected.
- `rate` is not the share kept. The target is (question + thinking tokens) · γ with nothing taken
  off for the question, since `concate_question=False` (l. 586-595), and the keep share per window
  is that target over (thinking tokens + 3), capped at 1 (`get_dynamic_compression_ratio`,
  l. 1031-1037): for a GSM8K CoT of ~100 tokens after a ~50-token question it is ~1.45 γ, so every
  γ ≥ ~0.69 keeps everything (a share of exactly 1 gives a threshold of -inf, l. 1511-1512).
- The threshold of a window is the int(n · share)-th best score over all n thinking tokens, kept
  with a strict `>` (l. 1508-1521), but only positions inside the window that `get_compressed_input`
  is given can be dropped: it receives end' = end - iterative_size + Δ and width Δ (l. 1726-1731)
  and protects everything outside [end' - Δ, end') (l. 1427-1428). `end` starts as
  min(iterative_size + start, N) (l. 1562), clamped to the sequence length N, yet is used as if it
  were start + 1800. For a thinking of c < 1797 tokens (one window, Δ = c + 2) after a prefix of s
  tokens, the window is [N - 1800, N - 1800 + c + 2), partly negative, and Python's negative
  slicing leaves:
    c ≤ (1798 - s)/3:                nothing prunable: the output is the input (every GSM8K CoT);
    (1798 - s)/3 < c < (1798 - s)/2: only the first s + 3c + 2 - 1800 thinking tokens prunable;
    (1798 - s)/2 ≤ c < 1800 - s:     nothing prunable again (a ~650-word CoT, ~1,160 tokens);
    1800 - s ≤ c < 1797:             the whole thinking prunable.
  A longer thinking is pruned in full 1800-token windows, but `end += iterative_size` (l. 1743) is
  not clamped, so `while end <= len` (l. 1587) stops before the last, partial window: the tail after
  the last full window is always kept whole.

One scoring pass for every ratio: the first window's two forward passes (`get_ppl` without a cache)
read the original token ids, which do not depend on γ, so `score` runs them once per CoT and
`select` replays llmlingua's call at any γ with those passes served from the result. Every later
window is scored on the γ-specific compressed text before it (llmlingua recomputes its losses after
dropping tokens, l. 1636-1653), so for a thinking long enough to reach a second full window
(≥ ~3,600 reference tokens) `select` runs those windows' passes at each γ, as llmlingua does.

llmlingua 0.2.2 slices the KV cache as a list of (key, value) pairs per layer, the format models
returned before transformers 5; transformers 5 returns a `DynamicCache`, which that code cannot
unpack (a ValueError at l. 1659 once a second window is reached). `_LegacyCacheModel` converts
between the two formats at the model's call, which is what transformers 4 did internally, so the
authors' code runs unchanged under either.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tokenskip.compression.scorers.base import CoT, Scorer
from tokenskip.core.errors import UsageError

ITERATIVE_SIZE = 1800
DEFAULT_MAX_THINKING_TOKENS = 5000
# the authors' call, less context, question and rate
AUTHORS_CALL: dict[str, Any] = {
    "instruction": "",
    "concate_question": False,
    "use_context_level_filter": False,
    "use_token_level_filter": True,
    "condition_compare": True,
    "condition_in_question": "after",
    "iterative_size": ITERATIVE_SIZE,
    "force_reserve_digit": True,
    "rank_method": "longllmlingua",
}


def authors_call(thinking: str, question: str, rate: float, iterative_size: int = ITERATIVE_SIZE) -> dict[str, Any]:
    """The keyword arguments of the authors' `compress_prompt` call for one thinking text at one rate."""
    return {"context": thinking, "question": question, "rate": rate, **AUTHORS_CALL, "iterative_size": iterative_size}


@dataclass(frozen=True)
class AuthorsScoredCoT:
    """A CoT as the authors' call compresses it (cut to the thinking-token budget), with the losses of
    llmlingua's first-window passes, keyed by the token ids each pass read."""

    thinking: str
    question: str
    cut: bool  # whether the thinking was cut to max_thinking_tokens
    first_window: dict[tuple[int, ...], Any] = field(repr=False)  # token ids -> per-token loss tensor


class _FirstWindowScored(Exception):
    """Raised by the recording `get_ppl` once both first-window passes are in: the rest of the call
    (which depends on γ) is `select`'s."""


class _LegacyCacheModel:
    """The reference model as llmlingua 0.2.2 expects it: a KV cache given as a list of (key, value)
    per layer goes in as a `DynamicCache`, and the cache that comes out is such a list again."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, *args, past_key_values=None, **kwargs):
        from transformers.cache_utils import Cache, DynamicCache

        if past_key_values is not None and not isinstance(past_key_values, Cache):
            pairs = [(key, value) for key, value in past_key_values]
            past_key_values = (DynamicCache.from_legacy_cache(pairs) if hasattr(DynamicCache, "from_legacy_cache")
                               else DynamicCache(pairs))
        output = self.model(*args, past_key_values=past_key_values, **kwargs)
        cache = getattr(output, "past_key_values", None)
        if isinstance(cache, Cache):
            output.past_key_values = ([tuple(pair) for pair in cache.to_legacy_cache()]
                                      if hasattr(cache, "to_legacy_cache")
                                      else [(layer.keys, layer.values) for layer in cache.layers])
        return output


def load_compressor(model_path: str, *, device: str, torch_dtype=None):
    """llmlingua's causal `PromptCompressor` on `device`, its model wrapped for llmlingua's cache format."""
    from tokenskip.compression.scorers.llmlingua2 import use_offline_tiktoken

    use_offline_tiktoken()  # PromptCompressor loads tiktoken's cl100k_base for its token counts
    from llmlingua import PromptCompressor

    model_config: dict[str, Any] = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    compressor = PromptCompressor(model_name=str(model_path), device_map=device, model_config=model_config)
    if not isinstance(compressor.model, _LegacyCacheModel):
        compressor.model = _LegacyCacheModel(compressor.model)
    return compressor


class AuthorsCTSScorer(Scorer):
    """CTS as the authors ran it: llmlingua's LongLLMLingua call with the reference model, condition
    = the question, each thinking cut first to `max_thinking_tokens` tokens of the target model's
    tokenizer (`target_tokenizer`: a folder or hub id; no cut without it, or with 0).

    One CoT per forward pass, as llmlingua runs it (batching would change the scores by padding and
    rounding, and the output would no longer be llmlingua's). `dtype` as the stage's --dtype (auto:
    float32 on CPU, bf16 on a GPU that has it; the authors' `device_map="cuda"` loaded the
    checkpoint's own dtype, bf16 for their Qwen2.5 reference).
    """

    name = "cts_authors"
    script = "CTS_data_get.py --selection authors"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: str = "auto",
        target_tokenizer: str | None = None,
        max_thinking_tokens: int = DEFAULT_MAX_THINKING_TOKENS,
        iterative_size: int = ITERATIVE_SIZE,
        progress: bool = True,
    ):
        from tokenskip.models.loading import load_tokenizer, resolve_device, resolve_dtype, resolve_model_path

        if max_thinking_tokens < 0:
            raise UsageError("--max-thinking-tokens must be 0 (no cut) or positive")
        path = resolve_model_path(str(model_path), "--reference_model")
        self.device = resolve_device(device)
        self.compressor = load_compressor(path, device=self.device, torch_dtype=resolve_dtype(dtype, self.device))
        self.target_tokenizer = load_tokenizer(target_tokenizer) if target_tokenizer and max_thinking_tokens else None
        self.max_thinking_tokens = max_thinking_tokens
        self.iterative_size = iterative_size
        self.progress = progress
        self._original_get_ppl = self.compressor.get_ppl
        self.compressor.get_ppl = self._get_ppl  # an instance attribute: llmlingua's self.get_ppl finds it first
        self._recording: dict | None = None  # set only during one call of `score`'s or `select`'s
        self._serving: dict | None = None

    def cut(self, text: str) -> tuple[str, bool]:
        """The thinking cut to `max_thinking_tokens` target-model tokens (the authors' cutoff_len),
        unchanged when it is not longer."""
        if self.target_tokenizer is None:
            return text, False
        ids = self.target_tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) <= self.max_thinking_tokens:
            return text, False
        return self.target_tokenizer.decode(ids[: self.max_thinking_tokens], skip_special_tokens=False), True

    def score(self, cots: Sequence[CoT]) -> list[AuthorsScoredCoT]:
        """Each CoT cut to the budget, with llmlingua's two first-window passes over it."""
        from tqdm import tqdm

        scored = []
        for index, cot in enumerate(tqdm(cots, unit="CoT", desc="CTS (authors) scoring", disable=not self.progress)):
            if not cot.question:
                raise UsageError(f"CoT {index} has no question: the authors' call conditions on it "
                                 "(llmlingua's longllmlingua ranking refuses an empty one)")
            thinking, cut = self.cut(cot.text)
            first_window: dict[tuple[int, ...], Any] = {}
            if thinking:
                with self._mode(recording=first_window):
                    try:
                        self._call(thinking, cot.question, 0.5)  # any γ: the first window's passes ignore it
                    except _FirstWindowScored:
                        pass
            scored.append(AuthorsScoredCoT(thinking, cot.question, cut, first_window))
        return scored

    def select(self, scored: AuthorsScoredCoT, ratio: float) -> str:
        """llmlingua's `compressed_prompt` for the CoT at `ratio`. An empty CoT stays empty (llmlingua
        would compress a single space in its place)."""
        if not scored.thinking:
            return ""
        with self._mode(serving=scored.first_window):
            return self._call(scored.thinking, scored.question, ratio)["compressed_prompt"]

    report_needs_scores = True

    def cot_counts(self, cot: CoT, compressed: dict[float, str],
                   scored: AuthorsScoredCoT) -> dict[float, dict[str, float]]:
        """Per ratio, whether nothing was pruned from the CoT, and whether it was cut to the
        thinking-token budget. An unpruned CoT comes back as its tokens decoded, which the
        tokenizer's `clean_up_tokenization_spaces` may change ("= .4" -> "=.4"): either text counts."""
        same = {scored.thinking, self.unpruned(scored.thinking)}
        return {ratio: {"cots": 1, "unpruned": int(text in same), "cut": int(scored.cut)}
                for ratio, text in compressed.items()}

    @classmethod
    def report_from_counts(cls, totals: dict[float, dict[str, float]]) -> dict[float, dict]:
        """Per ratio, the share of CoTs from which nothing was pruned, and how many were cut."""
        return {ratio: {"share_unpruned": sums["unpruned"] / sums["cots"],
                        "n_cut_to_max_thinking_tokens": sums["cut"]} for ratio, sums in totals.items()}

    def unpruned(self, thinking: str) -> str:
        """The thinking as llmlingua returns it when it prunes nothing: its tokens, decoded."""
        tokenizer = self.compressor.tokenizer
        return tokenizer.batch_decode([tokenizer(thinking, add_special_tokens=False).input_ids])[0]

    def _call(self, thinking: str, question: str, rate: float) -> dict:
        try:
            return self.compressor.compress_prompt(**authors_call(thinking, question, rate, self.iterative_size))
        except AssertionError as exc:  # llmlingua checks with assert that it found the thinking after the question
            raise UsageError(f"llmlingua's compress_prompt failed an internal check ({exc or 'assert'}) on the CoT "
                             f"starting {thinking[:40]!r}; the authors' script stops there too") from None

    @contextmanager
    def _mode(self, *, recording: dict | None = None, serving: dict | None = None):
        self._recording, self._serving = recording, serving
        try:
            yield
        finally:
            self._recording = self._serving = None

    def _get_ppl(self, text, granularity="sentence", input_ids=None, attention_mask=None, past_key_values=None,
                 return_kv=False, end=None, condition_mode="none", condition_pos_id=0):
        """llmlingua's `get_ppl`, with the passes of a first window (no cache, no end: the only calls
        that read the original, γ-independent token ids) recorded by `score` and served to `select`.

        A served pass returns no cache: llmlingua drops the first window's cache (l. 1656-1662, 1688-1697).
        """
        first = (input_ids is not None and past_key_values is None and end is None and return_kv
                 and granularity == "token")
        key = tuple(input_ids[0].tolist()) if first else None
        if first and self._serving is not None and key in self._serving:
            return self._serving[key].clone(), None
        result = self._original_get_ppl(text, granularity, input_ids, attention_mask, past_key_values, return_kv,
                                        end, condition_mode, condition_pos_id)
        if first and self._recording is not None:
            self._recording[key] = result[0].detach().clone()
            if len(self._recording) == 2:  # the conditional pass and the thinking-alone pass
                raise _FirstWindowScored
        return result

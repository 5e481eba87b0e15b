"""Conditional Token Selection (CTS): keep the CoT tokens that knowing the answer makes predictable.

From "Not All Tokens Are What You Need in Thinking" (Yuan et al., 2025, arXiv 2505.17827). A causal
reference model reads each CoT twice, and every CoT token x_i gets the score

    s_i = log p(x_i | question, answer, x_<i) - log p(x_i | question, x_<i)

from the two passes below. Pieces are tokenized separately (no special tokens) and their ids
concatenated, so the CoT's tokens are the same ids in both passes whatever the tokenizer merges
across piece boundaries; BOS is the tokenizer's own (Llama 3 has one, Qwen and SmolLM2 none):

    unconditional:  [BOS] {question} "\\n\\n" {cot}
    conditional:    [BOS] {question} "\\n\\n" "The final answer is: {answer}" "\\n\\n" {cot}

The authors' script runs LongLLMLingua's `condition_compare`: the condition prefixes the text,
joined by a blank line, and the other pass reads the thinking alone. The paper conditions on the
answer; here both passes also read the question, so that s_i measures what the answer adds: a
token that merely copies a number from the question is predictable in both passes and scores
about 0 instead of looking important. The answer line uses TokenSkip's own answer phrase.

Selection works on units of the reference model's tokens: a token with visible text together with
the tokens just before it that show none on their own, i.e. whitespace-only tokens (byte-level BPE
already glues one leading space to a word; SmolLM2 even splits off the space before every digit)
and the leading byte pieces of a character split across tokens ("≈" is two tokens in SmolLM2).
So a kept "1" keeps its space, a kept line start keeps its newline, and no half character (U+FFFD)
ever appears, and the digits of one number form one unit (so 48 never becomes 4). A unit is ranked
by the best score among its tokens with visible text. At ratio γ the
n units of a CoT keep the k = max(1, γ·n rounded half up) best, ties to the earlier unit, in CoT
order, decoded as one id sequence with leading whitespace stripped. The ranking does not depend on
γ, so one scoring pass serves every ratio and smaller ratios keep subsets of larger ones.
Whitespace after the last visible token belongs to no unit and is dropped.

Long CoTs are scored in sliding windows, so that no forward pass reads more than one window of W
tokens however long the CoT: W is the model's context, or `window` if smaller, and at most half of
`max_batch_tokens` (a window's two passes run together, so a pass never exceeds the token budget
and memory stays bounded: the logits of a pass are its tokens times the vocabulary). The shared
prefix keeps at most W/2 tokens (the question loses its start, then the answer line if it must);
the first window fills the room R = W - prefix with the CoT's first tokens; each later one scores
the next `stride` tokens (default R/2) with the R - stride CoT tokens just before them as context.
Every CoT token is scored exactly once, and both passes use the same windows, so s_i compares like
with like. A CoT that fits in the first window is scored in one pass per prompt layout, exactly as
if there were no windows.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

from tokenskip.compression.scorers.base import CoT, Scorer
from tokenskip.core.errors import UsageError, first_line
from tokenskip.core.ratios import check_ratio
from tokenskip.prompting.prompts import ANSWER_MARKER

SEPARATOR = "\n\n"
ANSWER_LINE = ANSWER_MARKER.strip() + " {answer}"  # "The final answer is: {answer}"
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
FALLBACK_CONTEXT = 2048
MIN_WINDOW = 16  # room for BOS, two separators and some CoT in every window
LOGPROB_SLICE_ELEMENTS = 1 << 25  # logits turned into log-probabilities at a time (128 MiB in float32)


@dataclass(frozen=True)
class ScoredCoT:
    """A CoT in the reference model's tokens, with each token's conditional importance s_i, and the
    units that selection keeps or drops whole, each with the score it ranks by."""

    token_ids: list[int]
    scores: list[float]
    units: list[list[int]]  # token positions, in CoT order
    unit_scores: list[float]


@dataclass(frozen=True)
class _Window:
    """Two sequences ending in the same CoT tokens; their last `n_scored` tokens get scores here."""

    cot: int
    start: int  # index in the CoT of the first scored token
    n_scored: int
    conditional: list[int]
    unconditional: list[int]


def keep_count(n: int, ratio: float) -> int:
    """γ·n rounded to the nearest integer, halves up, at least 1 (0 for an empty CoT).

    Computed on the decimal γ as written (0.7 is 7/10 exactly): in floating point 0.7·45 is
    31.499999999999996 and would keep 31 instead of 32. `ratio` is one `CTSScorer.check_ratios` accepts.
    """
    return min(n, max(1, math.floor(Fraction(str(ratio)) * n + Fraction(1, 2)))) if n else 0


def keep_units(unit_scores: Sequence[float], ratio: float) -> list[int]:
    """Indices of the units kept at `ratio`, in CoT order: the best `keep_count` by score.

    sorted() is stable, so equal scores keep CoT order and the earlier unit wins a tie.
    """
    ranked = sorted(range(len(unit_scores)), key=lambda unit: -unit_scores[unit])
    return sorted(ranked[: keep_count(len(unit_scores), ratio)])


def check_reference_model(path: str) -> str:
    """The reference model's folder (or hub id), refused early unless it holds a causal LM."""
    from transformers import AutoConfig

    from tokenskip.models.loading import DOWNLOAD_HINT, resolve_model_path

    path = resolve_model_path(path, "--reference_model")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    except (OSError, ValueError) as exc:
        reason = first_line(exc)
        raise UsageError(f"could not read a model config from {path} ({reason}); {DOWNLOAD_HINT}") from None
    require_causal_lm(path, config)
    return path


def require_causal_lm(path: str, config) -> None:
    """Refuse a model whose config names architectures, none of them a causal LM."""
    architectures = config.architectures or []
    if architectures and not any(name.endswith(CAUSAL_LM_SUFFIXES) for name in architectures):
        raise UsageError(f"--reference_model {path} holds {', '.join(architectures)}, not a causal LM; "
                         "CTS needs a causal LM such as models/SmolLM2-135M-Instruct or Qwen2.5-7B-Instruct")


def _join_numbers(units: list[list[int]], texts: list[str]) -> list[list[int]]:
    """Make a number split over several units ("4" "8", "2" "." "5") one unit, given each unit's
    text: kept or dropped whole, so pruning never turns 48 into 4 (LLMLingua-2's
    `force_reserve_digit` serves the same end there)."""
    joined: list[list[int]] = []
    for index, (unit, text) in enumerate(zip(units, texts)):
        before = texts[index - 1] if index else ""
        after = texts[index + 1] if index + 1 < len(texts) else ""
        digit_after_digit = text[:1].isdigit() and (before[-1:].isdigit() or before in (".", ","))
        separator_in_number = text in (".", ",") and before[-1:].isdigit() and after[:1].isdigit()
        if joined and (digit_after_digit or separator_in_number):
            joined[-1] = joined[-1] + unit
        else:
            joined.append(unit)
    return joined


class CTSScorer(Scorer):
    """Scores CoTs with a causal reference model, many CoTs per forward pass, both passes together.

    `batch_size` counts CoT windows per forward pass (each is two sequences); `max_batch_tokens`
    bounds the padded tokens of a forward pass. `max_length` overrides the model's context size.
    `window` caps the tokens of one sequence (prefix included) below the context, and `stride` sets
    how many new CoT tokens each window after the first scores (see the module's docstring).
    """

    name = "cts"
    script = "CTS_data_get.py"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        max_batch_tokens: int = 8192,
        max_length: int | None = None,
        window: int | None = None,
        stride: int | None = None,
        progress: bool = True,
    ):
        from tokenskip.models.loading import (
            load_causal_lm,
            load_tokenizer,
            resolve_device,
            resolve_dtype,
            resolve_model_path,
        )

        if batch_size < 1 or max_batch_tokens < 1:
            raise UsageError("--batch-size and --max-batch-tokens must be positive")
        if window is not None and window < MIN_WINDOW:
            raise UsageError(f"--window must be at least {MIN_WINDOW} tokens, got {window}")
        if window is not None and 2 * window > max_batch_tokens:
            raise UsageError(f"--window {window} needs --max-batch-tokens of at least {2 * window} "
                             f"(a window's two passes run together), got {max_batch_tokens}")
        if stride is not None and stride < 1:
            raise UsageError(f"--stride must be positive, got {stride}")
        # the stage ran check_reference_model before reading its data; here the loaded model's
        # config is checked rather than read from disk a second time
        path = resolve_model_path(str(model_path), "--reference_model")
        device = resolve_device(device)
        self.tokenizer = load_tokenizer(path)
        self.model = load_causal_lm(path, device=device, dtype=resolve_dtype(dtype, device))
        require_causal_lm(path, self.model.config)
        self.device = device
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length or self._context_size()
        # the tokens of one sequence: the context, or less where the token budget or `window` says so
        self.window = min(self.max_length, window or self.max_length, max(MIN_WINDOW, max_batch_tokens // 2))
        self.stride = stride
        self.progress = progress
        with_specials = self.tokenizer("a", add_special_tokens=True).input_ids
        bare = self._encode("a")
        self._bos = with_specials[: len(with_specials) - len(bare)] if with_specials[-len(bare):] == bare else []
        self._pad_id = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        # ALiBi models (Bloom, MPT) take no position ids: their biases are relative anyway
        self._takes_positions = "position_ids" in inspect.signature(self.model.forward).parameters

    def check_ratios(self, ratios: Sequence[float]) -> None:
        """γ in (0, 1]: at 1 every unit is kept, the CoT as it was."""
        for ratio in ratios:
            check_ratio(ratio, keep_all=True)

    def select(self, scored: ScoredCoT, ratio: float) -> str:
        return self._decode([scored.token_ids[p] for p in self.kept_positions(scored, ratio)]).lstrip()

    def kept_positions(self, scored: ScoredCoT, ratio: float) -> list[int]:
        """The token positions kept at `ratio`, in CoT order, whole units at a time."""
        return [p for u in keep_units(scored.unit_scores, ratio) for p in scored.units[u]]

    def selections(self, scored: ScoredCoT, ratios: Sequence[float]) -> dict[float, list[int]]:
        """`kept_positions` at each ratio."""
        return {ratio: self.kept_positions(scored, ratio) for ratio in ratios}

    def units(self, token_ids: Sequence[int]) -> list[list[int]]:
        """Token positions grouped into units: whitespace-only tokens and the pieces of a character
        split across tokens join the token that completes them with visible text."""
        units: list[list[int]] = []
        texts: list[str] = []
        pending: list[int] = []
        for position in range(len(token_ids)):
            pending.append(position)
            text = self._decode([token_ids[p] for p in pending])
            if text.strip() and not text.endswith("\ufffd"):
                units.append(pending)
                texts.append(text)
                pending = []
        text = self._decode([token_ids[p] for p in pending])
        if text.strip():  # a CoT ending mid-character
            units.append(pending)
            texts.append(text)
        return _join_numbers(units, texts)

    def score(self, cots: Sequence[CoT]) -> list[ScoredCoT]:
        """Every CoT's tokens, their s_i (from one conditional and one unconditional pass) and units."""
        import torch
        from tqdm import tqdm

        token_ids = [self._encode(cot.text) for cot in cots]
        windows = [w for index, cot in enumerate(cots) for w in self._windows(index, cot, token_ids[index])]
        scores = [[0.0] * len(ids) for ids in token_ids]
        unfinished = [0] * len(cots)
        for window in windows:
            unfinished[window.cot] += 1
        with tqdm(total=len(cots), unit="CoT", desc="CTS scoring", disable=not self.progress) as bar, \
                torch.inference_mode():
            bar.update(unfinished.count(0))  # empty CoTs need no pass
            for batch in self._batches(windows):
                sequences = [seq for w in batch for seq in (w.conditional, w.unconditional)]
                logprobs = self._target_logprobs(sequences, [w.n_scored for w in batch for _ in range(2)])
                for window, conditional, unconditional in zip(batch, logprobs[::2], logprobs[1::2]):
                    end = window.start + window.n_scored
                    scores[window.cot][window.start:end] = (conditional - unconditional).tolist()
                    unfinished[window.cot] -= 1
                    if unfinished[window.cot] == 0:
                        bar.update(1)
        return [self._scored(ids, s) for ids, s in zip(token_ids, scores)]

    def _scored(self, token_ids: list[int], scores: list[float]) -> ScoredCoT:
        """The CoT's units, each ranked by its best token with visible text (whitespace pieces
        carry no content); computed once here, they serve every ratio."""
        units = self.units(token_ids)
        visible = [bool(self._decode([token_id]).strip()) for token_id in token_ids]
        ranked_by = [[p for p in unit if visible[p]] or unit for unit in units]
        return ScoredCoT(token_ids, scores, units, [max(scores[p] for p in positions) for positions in ranked_by])

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _context_size(self) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 10**7]
        return min(limits) if limits else FALLBACK_CONTEXT

    def _prefixes(self, cot: CoT) -> tuple[list[int], list[int]]:
        """The conditional and unconditional prefixes; the longer, conditional one fits half a window."""
        separator = self._encode(SEPARATOR)
        answer = self._encode(ANSWER_LINE.format(answer=cot.answer))
        room = max(0, self.window // 2 - len(self._bos) - 2 * len(separator))
        answer = answer[max(0, len(answer) - room):]
        question = self._encode(cot.question)
        question = question[max(0, len(question) - (room - len(answer))):] if room > len(answer) else []
        unconditional = self._bos + question + separator
        return unconditional + answer + separator, unconditional

    def _windows(self, index: int, cot: CoT, ids: list[int]) -> Iterator[_Window]:
        if not ids:
            return
        conditional, unconditional = self._prefixes(cot)
        room = self.window - len(conditional)  # at least half the window
        step = min(room, self.stride) if self.stride else max(1, room // 2)
        start = 0
        while start < len(ids):
            end = min(len(ids), room if start == 0 else start + step)
            context = ids[max(0, end - room):end]
            yield _Window(index, start, end - start, conditional + context, unconditional + context)
            start = end

    def _batches(self, windows: list[_Window]) -> Iterator[list[_Window]]:
        """Longest first (a stable sort, so reruns batch alike), within both batch limits."""
        batch: list[_Window] = []
        for window in sorted(windows, key=lambda w: -len(w.conditional)):
            width = len(batch[0].conditional) if batch else len(window.conditional)
            if batch and (len(batch) == self.batch_size or 2 * (len(batch) + 1) * width > self.max_batch_tokens):
                yield batch
                batch = []
            batch.append(window)
        if batch:
            yield batch

    def _target_logprobs(self, sequences: list[list[int]], n_scored: list[int]):
        """log p of each sequence's last n tokens, the sequences left-padded into one forward pass."""
        import torch

        width = max(len(seq) for seq in sequences)
        input_ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq):] = torch.tensor(seq)
            attention_mask[row, width - len(seq):] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_positions:  # each sequence counts its positions from its first real token
            inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        # left padding puts every scored token in the last columns: only those need logits
        keep = max(n_scored) + 1
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        logits = self.model(**inputs, use_cache=False, logits_to_keep=keep).logits[:, -keep:-1]
        # log-softmax a slice of positions at a time: each position's values are computed alone, so
        # the result is the same as in one call, without a float32 copy of a whole row's logits
        positions = max(1, LOGPROB_SLICE_ELEMENTS // logits.shape[-1])
        result = []
        for row, n in enumerate(n_scored):
            targets = input_ids[row, width - n:].to(self.device)
            row_logits = logits[row, keep - 1 - n:]
            parts = [row_logits[s:s + positions].float().log_softmax(-1).gather(-1, targets[s:s + positions, None])
                     for s in range(0, n, positions)]
            result.append(torch.cat(parts).squeeze(-1).cpu())
        return result

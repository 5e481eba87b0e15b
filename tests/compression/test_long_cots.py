"""Long CoTs (thousands of tokens, many model windows): every scorer reads them whole, in bounded pieces.

- LLMLingua-2 splits a long CoT into llmlingua's 512-token chunks and still returns exactly what
  llmlingua's `compress_prompt` returns, word for word, with no classifier pass wider than 512.
- NER-enhanced LLMLingua-2 boosts entities in every chunk of a long CoT, in time linear in its
  words and entities, with the same boosts as a word-by-entity double loop.
- CTS scores a long CoT in sliding windows: no forward pass reads more than a window, every
  token is scored exactly once (by the window rule, checked against unbatched passes), and a CoT
  that fits in a window scores exactly as without windows.

Tiny random-weight models keep this fast: a causal LM with a 64-token context makes a 400-token
CoT six windows long.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from testkit.classifiers import FOLDER_NAMES, sample_cots, tiny_classifier
from testkit.tiny_models import save_tiny_llama
from tokenskip.compression.scorers import CoT
from tokenskip.compression.scorers.cts import CTSScorer, keep_count
from tokenskip.compression.scorers.llmlingua2 import (
    MAX_SEQ_LEN,
    OPTIONS_BY_MODEL_TYPE,
    LLMLingua2Scorer,
    use_offline_tiktoken,
)
from tokenskip.compression.scorers.ner import NERScorer, word_spans
from tokenskip.core.errors import UsageError

RATES = (0.9, 0.8, 0.7, 0.6, 0.5)
QUESTION = "How many clips did Natalia sell in April and May?"


def long_cot_text() -> str:
    """A reasoning text of ~5,000 classifier tokens (12 chunks): many solutions one after another,
    with a stretch of over 511 tokens that has no sentence end (llmlingua then cuts mid-sentence)."""
    solutions = sample_cots(40, seed=3)  # 11,290 characters of GSM8K solutions
    more = 40
    while sum(map(len, solutions)) < 11_000:  # the synthetic ones (no shared data) are shorter: take more
        more += 10
        solutions = sample_cots(more, seed=3)
    middle = " and ".join(f"x + {i}" for i in range(200))
    return "\n".join(solutions[:20]) + "\nSo we add " + middle + " together.\n" + "\n\n".join(solutions[20:])


def forward_widths(model) -> tuple[list[tuple[int, int]], object]:
    """(rows, columns) of every forward pass of `model`, recorded by a hook; returns the list and the handle."""
    shapes: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        shapes.append(tuple(ids.shape))

    return shapes, model.register_forward_pre_hook(record, with_kwargs=True)


# --- LLMLingua-2 and NER: llmlingua's chunks ---

@pytest.fixture(scope="module", params=sorted(FOLDER_NAMES))
def classifier(request, tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp(f"long-{request.param}"), request.param)


@pytest.mark.parametrize("model_type", sorted(OPTIONS_BY_MODEL_TYPE))
def test_llmlingua2_long_cot_matches_llmlingua_word_for_word(classifier, model_type):
    use_offline_tiktoken()
    from llmlingua import PromptCompressor

    text = long_cot_text()
    options = OPTIONS_BY_MODEL_TYPE[model_type]
    scorer = LLMLingua2Scorer(classifier, options=options, fixed_padding=True, max_batch_tokens=4 * MAX_SEQ_LEN,
                              progress=False)
    shapes, hook = forward_widths(scorer.model)
    try:
        [scored] = scorer.score([text])
    finally:
        hook.remove()
    n_tokens = len(scorer.tokenizer.tokenize(text))
    assert n_tokens > 4500 and len(scored.chunks) >= 10, (n_tokens, len(scored.chunks))  # ~5,000 and 12
    assert all(columns <= MAX_SEQ_LEN and rows * columns <= 4 * MAX_SEQ_LEN for rows, columns in shapes)
    assert sum(rows for rows, _ in shapes) == len(scored.chunks)

    compressor = PromptCompressor(model_name=str(classifier), use_llmlingua2=True, device_map="cpu")
    kwargs = {}
    if options.force_tokens:
        kwargs = {"force_tokens": list(options.force_tokens), "force_reserve_digit": options.force_reserve_digit,
                  "drop_consecutive": options.drop_consecutive}
    lengths = []
    for rate in RATES:
        expected = compressor.compress_prompt(text, rate=rate, **kwargs)
        compressed = scorer.compress_scored(scored, rate)
        assert compressed.split(" ") == expected["compressed_prompt"].split(" "), rate
        assert compressed == expected["compressed_prompt"]
        assert scorer.llmlingua_token_count(compressed) == expected["compressed_tokens"]
        lengths.append(len(compressed))
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] < 0.8 * len(text)


def boosted_by_double_loop(scorer: NERScorer, text: str, scored, entities):
    """The boosts as a word-by-entity double loop computes them: the reference for the sweep."""
    render = scorer.tokenizer.convert_tokens_to_string
    cursor, probs, words_of_entity = 0, [], [[] for _ in entities]
    for chunk_index, chunk in enumerate(scored.chunks):
        spans, cursor = word_spans(text, chunk.words, cursor, lambda word: render([word]))
        row = []
        for word_index, (span, prob) in enumerate(zip(spans, chunk.probs)):
            boost = 1.0
            for entity_index, entity in enumerate(entities):
                if span and span[0] < entity.end and entity.start < span[1]:
                    boost = max(boost, entity.boost)
                    words_of_entity[entity_index].append((chunk_index, word_index))
            row.append(prob * boost)
        probs.append(row)
    return probs, [words for words in words_of_entity if words]


def test_ner_boosts_entities_through_a_long_cot(classifier):
    text = long_cot_text()
    ner = NERScorer(classifier, progress=False)
    plain = LLMLingua2Scorer(classifier, progress=False)
    [boosted] = ner.score([text])
    [scored] = plain.score([text])
    assert [c.words for c in boosted.chunks] == [c.words for c in scored.chunks] and len(scored.chunks) >= 10
    [entities] = ner.entities([text])
    probs, entity_words = boosted_by_double_loop(ner, text, scored, entities)
    assert [c.probs for c in boosted.chunks] == probs
    assert boosted.entity_words == entity_words
    # entities are found and boosted in every chunk, the last included: the text stays aligned
    chunks_with_entities = {chunk for words in boosted.entity_words for chunk, _ in words}
    assert chunks_with_entities == set(range(len(scored.chunks)))
    assert len(entity_words) > 0.5 * len(entities)
    last = boosted.chunks[-1]
    assert any(b > p for b, p in zip(last.probs, scored.chunks[-1].probs))


# --- CTS: sliding windows ---

@pytest.fixture(scope="module")
def short_context_lm(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and a 64-token context."""
    from transformers import AutoTokenizer

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-64"), AutoTokenizer.from_pretrained(smollm2_dir),
                           max_positions=64, seed=1)


def cts_long_cot(n_steps: int = 15) -> CoT:
    text = "\n".join(f"Step {i}: she had {3 * i} clips, sold {i} and kept {2 * i}, so {3 * i} - {i} = {2 * i}."
                     for i in range(1, n_steps + 1))
    return CoT(text, QUESTION, "72")


def encode(scorer: CTSScorer, text: str) -> list[int]:
    return scorer.tokenizer(text, add_special_tokens=False).input_ids


def expected_window_scores(scorer: CTSScorer, cot: CoT, window: int, stride: int | None) -> tuple[list[float], int]:
    """s_i of every CoT token by the documented window rule, each window in its own unbatched
    passes: the prefix (it fits half the window here), then up to R = window - prefix CoT tokens;
    the first window scores the first R tokens, each later one the next `stride` (R/2 by default)
    after the R - stride tokens before them. Returns the scores and the number of windows."""
    ids = encode(scorer, cot.text)
    separator = encode(scorer, "\n\n")
    unconditional = scorer._bos + encode(scorer, cot.question) + separator
    conditional = unconditional + encode(scorer, f"The final answer is: {cot.answer}") + separator
    assert len(conditional) <= window // 2, "the test's question must fit untruncated"
    room = window - len(conditional)
    step = min(room, stride) if stride else room // 2
    bounds = [(0, min(room, len(ids)))]
    while bounds[-1][1] < len(ids):
        bounds.append((bounds[-1][1], min(len(ids), bounds[-1][1] + step)))
    scores: list[float] = []
    for start, end in bounds:
        context = ids[max(0, end - room):end]
        both = []
        for prefix in (conditional, unconditional):
            sequence = prefix + context
            assert len(sequence) <= window
            with torch.inference_mode():
                logits = scorer.model(torch.tensor([sequence])).logits[0].float().log_softmax(-1)
            targets = torch.tensor(sequence[len(sequence) - (end - start):])
            positions = torch.arange(len(sequence) - (end - start) - 1, len(sequence) - 1)
            both.append(logits[positions, targets])
        scores += (both[0] - both[1]).tolist()
    return scores, len(bounds)


@pytest.mark.parametrize(("n_steps", "stride", "max_batch_tokens"), [(15, None, 256), (8, 9, 128)])
def test_cts_long_cot_is_scored_completely_within_the_context(short_context_lm, n_steps, stride, max_batch_tokens):
    scorer = CTSScorer(short_context_lm, device="cpu", stride=stride, max_batch_tokens=max_batch_tokens,
                       batch_size=8, progress=False)
    assert scorer.window == 64  # the model's context
    cot = cts_long_cot(n_steps)
    shapes, hook = forward_widths(scorer.model)
    try:
        [scored] = scorer.score([cot])
    finally:
        hook.remove()
    expected, n_windows = expected_window_scores(scorer, cot, 64, stride)
    assert len(scored.token_ids) >= 3 * 64 and n_windows >= 8
    assert all(columns <= 64 and rows * columns <= max_batch_tokens for rows, columns in shapes)
    assert sum(rows for rows, _ in shapes) == 2 * n_windows  # every window once, in both layouts
    assert len(scored.scores) == len(scored.token_ids) == len(expected)
    assert all(map(math.isfinite, scored.scores))
    assert torch.allclose(torch.tensor(scored.scores), torch.tensor(expected), atol=1e-4)


def test_cts_window_flag_bounds_a_model_with_a_long_context(tiny_lm_dir):
    cot = cts_long_cot(12)
    scorer = CTSScorer(tiny_lm_dir, device="cpu", window=96, stride=32, max_batch_tokens=512, progress=False)
    assert scorer.max_length == 2048 and scorer.window == 96
    shapes, hook = forward_widths(scorer.model)
    try:
        [scored] = scorer.score([cot])
    finally:
        hook.remove()
    expected, n_windows = expected_window_scores(scorer, cot, 96, 32)
    assert len(scored.token_ids) >= 4 * 96 and n_windows >= 10
    assert all(columns <= 96 for _, columns in shapes)
    assert torch.allclose(torch.tensor(scored.scores), torch.tensor(expected), atol=1e-4)
    # the compressed long CoT keeps whole units, γ of them, in order
    for ratio in RATES:
        kept = scorer.kept_positions(scored, ratio)
        assert kept == sorted(kept)
        assert sum(set(unit) <= set(kept) for unit in scored.units) == keep_count(len(scored.units), ratio)


def test_cts_cot_within_the_window_scores_as_without_windows(tiny_lm_dir):
    """A window (and a token budget) that holds prefix + CoT changes nothing, bit for bit."""
    cots = [cts_long_cot(2), CoT("Natalia sold 48/2 = 24 clips in May.", QUESTION, "72"), CoT("", QUESTION, "0")]
    without = CTSScorer(tiny_lm_dir, device="cpu", progress=False)
    assert without.window == 2048
    longest = max(len(encode(without, c.question)) + len(encode(without, c.text)) for c in cots) + 10
    assert longest <= 96 - 10, longest
    reference = without.score(cots)
    windowed = CTSScorer(tiny_lm_dir, device="cpu", window=96, stride=5, progress=False)
    assert windowed.score(cots) == reference  # same windows, same batches: identical
    assert windowed.compress(cots, RATES) == without.compress(cots, RATES)
    # a small token budget makes small windows (and other batches: one CoT per pass on both sides)
    one_by_one = CTSScorer(tiny_lm_dir, device="cpu", batch_size=1, progress=False).score(cots)
    for window, max_batch_tokens in [(None, 192), (100, 256)]:
        small = CTSScorer(tiny_lm_dir, device="cpu", window=window, max_batch_tokens=max_batch_tokens,
                          batch_size=1, progress=False)
        assert small.window <= 100 and small.score(cots) == one_by_one
    expected, n_windows = expected_window_scores(without, cots[0], 96, None)
    assert n_windows == 1
    assert torch.allclose(torch.tensor(reference[0].scores), torch.tensor(expected), atol=1e-4)


def test_cts_log_probabilities_in_slices_are_identical(tiny_lm_dir, monkeypatch):
    """Log-softmax over a few positions at a time (bounded memory) gives the very same scores."""
    from tokenskip.compression.scorers import cts

    cots = [cts_long_cot(4), CoT("Natalia sold 48/2 = 24 clips in May.", QUESTION, "72")]
    scorer = CTSScorer(tiny_lm_dir, device="cpu", progress=False)
    whole = scorer.score(cots)
    monkeypatch.setattr(cts, "LOGPROB_SLICE_ELEMENTS", 3 * scorer.model.config.vocab_size)
    assert scorer.score(cots) == whole


def test_cts_window_follows_the_token_budget_and_refuses_bad_settings(tiny_lm_dir):
    assert CTSScorer(tiny_lm_dir, device="cpu", max_batch_tokens=300, progress=False).window == 150
    assert CTSScorer(tiny_lm_dir, device="cpu", max_length=100, window=500, max_batch_tokens=1000,
                     progress=False).window == 100
    for kwargs, message in [({"window": 8}, "at least 16"),
                            ({"window": 4096, "max_batch_tokens": 4096}, "at least 8192"),
                            ({"stride": 0}, "stride must be positive")]:
        with pytest.raises(UsageError, match=message):
            CTSScorer(tiny_lm_dir, device="cpu", progress=False, **kwargs)


# --- bench/bench_long_cot.py: how it builds its CoTs, and its skip without data ---

def test_bench_builds_cots_within_the_token_budget(tmp_path, capsys):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("bench_long_cot", ROOT / "bench" / "bench_long_cot.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    records = [{"question": f"Question {i}?",
                "answer": f"She has {i} + 1 = <<{i}+1={i + 1}>>{i + 1} apples.\n#### {i + 1}"} for i in range(30)]
    words = lambda text: len(text.split())  # noqa: E731
    cots = bench.long_cots(records, 2, 60, words)
    # 8 words a solution, 5 for the answer sentence: 6 solutions fit in 60 words, 7 would not
    assert [c["n_solutions"] for c in cots] == [6, 6] and [words(c["text"]) for c in cots] == [53, 53]
    assert cots[1]["question"] == "Question 11?" and cots[1]["answer"] == "12"
    assert cots[0]["text"].endswith("apples.\n\nThe final answer is: $\\boxed{6}$") and "<<" not in cots[0]["text"]
    with pytest.raises(UsageError, match="too few problems"):
        bench.long_cots(records, 6, 60, words)
    assert bench.main(["--data", str(tmp_path / "missing.jsonl")]) == 0
    assert capsys.readouterr().out.startswith("skipped: no GSM8K train file")

"""The batched LLMLingua-2 scorer must return exactly what llmlingua's compress_prompt returns.

The reference is llmlingua itself, run on tiny random-weight classifiers built offline (an
XLM-RoBERTa one with a SentencePiece-style tokenizer and a BERT one with WordPiece, the two
families llmlingua supports). llmlingua picks its code path from the folder name, hence the
folder names below; the scorer must not care about them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from testkit.classifiers import (
    FOLDER_NAMES,
    TINY,
    build_classifier,
    gsm8k_cots,
    sample_corpus,
    tokenizer_training_texts,
)
from tokenskip.compression.scorers import CoT, scorer_class
from tokenskip.compression.scorers.llmlingua2 import (
    CL100K_SHA256,
    CL100K_URL,
    LLAMA3_OPTIONS,
    OPTIONS_BY_MODEL_TYPE,
    LLMLingua2Scorer,
    use_offline_tiktoken,
)
from tokenskip.core.errors import UsageError

RATES = (0.9, 0.8, 0.7, 0.6, 0.5)


@pytest.fixture(scope="module", params=sorted(FOLDER_NAMES))
def tiny_model(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(request.param) / FOLDER_NAMES[request.param]
    return build_classifier(folder, request.param, tokenizer_training_texts(), vocab_size=1000, **TINY)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return sample_corpus()


@pytest.fixture(scope="module")
def llmlingua_outputs(tiny_model, corpus) -> dict[tuple[str, float], list[dict]]:
    """llmlingua's own results, the way TokenSkip's script calls it: one CoT and one rate per call."""
    use_offline_tiktoken()
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=str(tiny_model), use_llmlingua2=True, device_map="cpu")
    llama3_kwargs = {"force_tokens": ["Step", ":"], "force_reserve_digit": True, "drop_consecutive": True}
    return {
        (name, rate): [compressor.compress_prompt(text, rate=rate, **kwargs) for text in corpus]
        for name, kwargs in (("qwen", {}), ("llama3", llama3_kwargs))
        for rate in RATES
    }


@pytest.mark.parametrize("model_type", sorted(OPTIONS_BY_MODEL_TYPE))
def test_matches_llmlingua_word_for_word(tiny_model, corpus, llmlingua_outputs, model_type):
    options = OPTIONS_BY_MODEL_TYPE[model_type]
    scorer = LLMLingua2Scorer(tiny_model, options=options, fixed_padding=True, max_batch_tokens=8 * 512)
    scored = scorer.score(corpus)
    assert sum(len(s.chunks) for s in scored) > len(corpus), "the corpus must exercise chunking"
    for rate in RATES:
        for text, result, expected in zip(corpus, scored, llmlingua_outputs[model_type, rate]):
            compressed = scorer.compress_scored(result, rate)
            assert compressed.split(" ") == expected["compressed_prompt"].split(" "), (rate, text)
            assert compressed == expected["compressed_prompt"]
            assert scorer.llmlingua_token_count(text) == expected["origin_tokens"]
            assert scorer.llmlingua_token_count(compressed) == expected["compressed_tokens"]


def test_the_comparison_is_not_trivial(corpus, llmlingua_outputs):
    """Every ratio must drop words, differently per ratio, or matching llmlingua proves little."""
    for name in OPTIONS_BY_MODEL_TYPE:
        outputs = [llmlingua_outputs[name, rate] for rate in RATES]
        lengths = [sum(len(r["compressed_prompt"]) for r in results) for results in outputs]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(RATES)
        assert lengths[0] < sum(map(len, corpus))


def test_dynamic_padding_agrees_with_fixed_padding(tiny_model, corpus):
    """Padding batches only to their longest chunk changes probabilities by float rounding only.

    That may flip a word where two probabilities tie within ~1e-7 at a cut-off, so the texts are
    required to agree almost always rather than always (on this corpus they agree everywhere).
    """
    fixed = LLMLingua2Scorer(tiny_model, options=LLAMA3_OPTIONS, fixed_padding=True).score(corpus)
    scorer = LLMLingua2Scorer(tiny_model, options=LLAMA3_OPTIONS, max_batch_tokens=1024)
    dynamic = scorer.score(corpus)
    agree = 0
    for a, b in zip(fixed, dynamic):
        assert [c.words for c in a.chunks] == [c.words for c in b.chunks]
        for ca, cb in zip(a.chunks, b.chunks):
            assert ca.probs == pytest.approx(cb.probs, abs=1e-5)
        agree += sum(scorer.compress_scored(a, rate) == scorer.compress_scored(b, rate) for rate in RATES)
    assert agree >= 0.99 * len(corpus) * len(RATES)


def test_does_not_depend_on_folder_name(tiny_model, corpus, tmp_path):
    renamed = shutil.copytree(tiny_model, tmp_path / "some-classifier")
    texts = corpus[:20]
    original = LLMLingua2Scorer(tiny_model, options=LLAMA3_OPTIONS).compress_texts(texts, RATES)
    assert LLMLingua2Scorer(renamed, options=LLAMA3_OPTIONS).compress_texts(texts, RATES) == original


def test_rejects_folders_that_hold_no_token_classifier(tiny_model, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        LLMLingua2Scorer(tmp_path / "missing")
    with pytest.raises(UsageError, match="cannot load the model config"):
        LLMLingua2Scorer(tmp_path)
    for key, value, message in [
        (
            "architectures",
            ["XLMRobertaForMaskedLM"],
            "holds XLMRobertaForMaskedLM, not a token-classification",
        ),
        ("architectures", None, "no recorded architecture"),
        ("num_labels", 3, "3 labels"),
    ]:
        folder = shutil.copytree(tiny_model, tmp_path / f"{key}-{value}")
        config = json.loads((folder / "config.json").read_text())
        if key == "num_labels":
            config["id2label"] = {str(i): f"L{i}" for i in range(value)}
        else:
            config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(UsageError, match=message):
            LLMLingua2Scorer(folder)


def test_rejects_rates_outside_zero_one(tiny_model):
    scorer = LLMLingua2Scorer(tiny_model)
    [scored] = scorer.score(["Step 1: 2 + 2 = 4."])
    for rate in (0.0, 1.0, 1.5):
        with pytest.raises(UsageError, match=r"must be in \(0, 1\), got"):
            scorer.compress_scored(scored, rate)


def test_is_the_registered_llmlingua2_method(tiny_model, corpus):
    assert scorer_class("llmlingua2") is LLMLingua2Scorer
    scorer = LLMLingua2Scorer(tiny_model)
    cots = [CoT(text) for text in corpus[:10]]
    compressed = scorer.compress(cots, [0.9, 0.5])
    assert compressed == scorer.compress_texts(corpus[:10], [0.9, 0.5])
    report = scorer.ratio_report(cots, compressed)
    assert set(report) == {0.9, 0.5}
    assert 0 < report[0.5]["mean_cl100k_ratio"] < report[0.9]["mean_cl100k_ratio"]
    if gsm8k_cots(1) or "bert" not in tiny_model.name:
        # below 1 where the kept words cost fewer cl100k tokens than the whole; with the synthetic CoTs
        # (no shared data), the BERT vocabulary splits them into word pieces that llmlingua joins back
        # with spaces ("48 / 2"), which can cost more cl100k tokens than the original text
        assert report[0.9]["mean_cl100k_ratio"] < 1


def test_offline_tiktoken_fills_a_fresh_cache(tmp_path, monkeypatch):
    import tiktoken.load

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    cached = use_offline_tiktoken()
    assert cached.parent == tmp_path and cached.is_file()
    ranks = tiktoken.load.load_tiktoken_bpe(CL100K_URL, expected_hash=CL100K_SHA256)  # no network needed
    assert len(ranks) == 100256

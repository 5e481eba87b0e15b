"""LLMLingua.py and llmlingua_ner.py: from a stage-1 predictions file to the five ratio files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from testkit.classifiers import sample_cots, tiny_classifier
from tokenskip.compression.scorers.ner import pattern_entities
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.stages import lingua as lingua_stage

RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("lingua"), "xlm-roberta")


def cot_texts() -> list[str]:
    return sample_cots(10) + [
        "Step 1: Natalia sold 48/2 = 24 clips in May. Therefore she sold 48 + 24 = 72 clips in April and May, "
        "because April had 48. So the answer is 72."]


@pytest.fixture()
def run_dir(tmp_path, tiny_lm_dir) -> Path:
    """A model outputs folder with a stage-1 predictions file: all but two answers correct."""
    samples = tmp_path / "out" / "7b" / "Original" / "train" / "samples"
    samples.mkdir(parents=True)
    records = [{"id": f"gsm8k-train-{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                                       {"role": "assistant", "content": ""}],
                "answer": "72", "prompt": f"<prompt {i}>", "model_output": text, "prediction": "72",
                "cot_length": 50, "accuracy": i % 5 != 1} for i, text in enumerate(cot_texts())]
    (samples / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / "metrics.json").write_text(json.dumps({"model_path": str(tiny_lm_dir)}))
    return tmp_path / "out" / "7b"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_llmlingua_stage_writes_every_ratio_as_llmlingua_would(run_dir, classifier):
    from llmlingua import PromptCompressor

    summary = lingua_stage.llmlingua_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier)])
    assert summary["n_correct"] == summary["n_compressed"] == len(cot_texts()) - 2
    means = []
    compressor = PromptCompressor(model_name=str(classifier), use_llmlingua2=True, device_map="cpu")
    for ratio in RATIOS:
        records = lines(run_dir / "Compression" / f"train_outputs_compressed_ratio_{ratio}.jsonl")
        assert set(records[0]) == {"id", "question", "input", "output", "answer", "model_answer", "is_correct", "cot",
                                   "compressed_cot", "original_cot_tokens", "compressed_cot_tokens",
                                   "compression_rate"}
        means.append(sum(r["compression_rate"] for r in records) / len(records))
        for record in records[:3]:
            expected = compressor.compress_prompt(record["cot"], rate=ratio)["compressed_prompt"]
            assert record["compressed_cot"] == expected
    assert means == sorted(means, reverse=True)
    first = (run_dir / "Compression" / "train_outputs_compressed_ratio_0.5.jsonl").read_bytes()
    lingua_stage.llmlingua_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier)])
    assert (run_dir / "Compression" / "train_outputs_compressed_ratio_0.5.jsonl").read_bytes() == first


def numbers_kept(texts: list[str]) -> int:
    return sum(len(re.findall(r"\d+", text)) for text in texts)


def test_ner_boosts_change_what_is_kept(run_dir, classifier):
    lingua_stage.llmlingua_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier)])
    summary = lingua_stage.ner_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier)])
    for ratio in RATIOS:
        assert 0.0 <= summary["ratios"][str(ratio)]["entity_preservation"] <= 1.0
    plain = lines(run_dir / "Compression" / "train_outputs_compressed_ratio_0.5.jsonl")
    ner = lines(run_dir / "NER_Enhanced_Compression" / "train_outputs_ner_enhanced_compressed_ratio_0.5.jsonl")
    assert [r["id"] for r in plain] == [r["id"] for r in ner]
    assert any(a["compressed_cot"] != b["compressed_cot"] for a, b in zip(plain, ner))
    # the boosted entities (numbers, equations...) survive more often than in plain LLMLingua-2
    assert numbers_kept([r["compressed_cot"] for r in ner]) > numbers_kept([r["compressed_cot"] for r in plain])
    preservation = [summary["ratios"][str(r)]["entity_preservation"] for r in RATIOS]
    assert preservation[0] >= preservation[-1]


def test_patterns_match_on_word_boundaries_and_any_case():
    kinds = lambda text: sorted({e.kind for e in pattern_entities(text)})  # noqa: E731
    assert kinds("I also went home.") == []
    assert kinds("Therefore, she won.") == ["logical connector"]
    assert "equation" in kinds("She has 16 - 3 - 4 = 9 eggs")
    assert "step marker" in kinds("step 2: add them")
    assert "latex math" in kinds("half is \\frac{1}{2}")
    assert "conclusion" in kinds("The answer is 9")


@pytest.mark.parametrize("args, message", [
    (["--input-dir", "{tmp}/nowhere"], "evaluation.py --data-type train"),
    (["--input-dir", "{run}", "--ratios", "0.5", "1.0"], r"in \(0, 1\)"),
    (["--input-dir", "{run}", "--llmlingua-path", "{tiny_lm}"], "not a token-classification model"),
])
def test_bad_input_is_one_line(args, message, run_dir, tiny_lm_dir, tmp_path):
    argv = [a.format(tmp=tmp_path, run=run_dir, tiny_lm=tiny_lm_dir) for a in args]
    result = subprocess.run([sys.executable, "LLMLingua.py", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_nothing_left_after_filtering_reports_counts(run_dir, classifier):
    predictions = run_dir / "Original" / "train" / "samples" / "predictions.jsonl"
    records = [{**r, "accuracy": False} for r in lines(predictions)]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UsageError, match=rf"no CoT left to compress: {len(records)} predictions, 0 correct"):
        lingua_stage.llmlingua_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier)])


def test_long_cots_are_dropped_with_the_reason(run_dir, classifier):
    summary = lingua_stage.llmlingua_main(["--input-dir", str(run_dir), "--llmlingua-path", str(classifier),
                                           "--max-cot-tokens", "100"])
    assert summary["dropped"] == {"longer than 100 tokens": summary["n_correct"] - summary["n_compressed"]}
    assert 0 < summary["n_compressed"] < summary["n_correct"]
    assert layout.ratio_file(run_dir / "Compression", 0.5).exists()

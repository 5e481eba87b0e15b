"""CTS: the conditional-importance scores, top-γ selection, determinism and the CTS_data_get.py stage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from tokenskip.compression.scorers import CoT, scorer_class
from tokenskip.compression.scorers.cts import CTSScorer, keep_count, keep_units
from tokenskip.core import layout
from tokenskip.core.cli import run_cli
from tokenskip.core.errors import UsageError
from tokenskip.core.ratios import DEFAULT_RATIOS
from tokenskip.stages import cts as cts_stage

RATIOS = DEFAULT_RATIOS
COTS = [
    CoT("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?", "72"),
    CoT("Weng earns 12/60 = $0.2 per minute.\n\nWorking 50 minutes, she earned 0.2 x 50 = $10.",
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?", "10"),
    CoT("Café: 3 × 4 = 12 €, and ü ≈ √16 ÷ 4.", "What does the café charge?", "12"),
    CoT("", "An empty CoT.", "0"),
]
FIELDS = {"id", "question", "input", "output", "answer", "model_answer", "is_correct", "cot", "compressed_cot",
          "original_cot_tokens", "compressed_cot_tokens", "compression_rate"}


@pytest.fixture(scope="module")
def tiny_scorer(tiny_lm_dir) -> CTSScorer:
    return CTSScorer(tiny_lm_dir, device="cpu", progress=False)


def token_logprobs(model, prefix: list[int], cot: list[int]) -> torch.Tensor:
    """log p of each CoT token after `prefix`, from one unpadded, unbatched forward pass."""
    ids = torch.tensor([prefix + cot])
    with torch.inference_mode():
        logprobs = model(ids).logits[0, len(prefix) - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(cot)[:, None]).squeeze(-1)


def is_subsequence(short: str, long: str) -> bool:
    chars = iter(long)
    return all(char in chars for char in short)


def assert_scores_match_two_separate_passes(scorer: CTSScorer, cots: list[CoT]) -> None:
    """The batched scores equal s_i computed by hand, one unbatched pass per prompt layout."""
    tokenizer = scorer.tokenizer
    for cot, result in zip(cots, scorer.score(cots)):
        ids = tokenizer(cot.text, add_special_tokens=False).input_ids
        question = tokenizer(cot.question, add_special_tokens=False).input_ids
        separator = tokenizer("\n\n", add_special_tokens=False).input_ids
        answer = tokenizer(f"The final answer is: {cot.answer}", add_special_tokens=False).input_ids
        assert result.token_ids == ids
        if not ids:
            assert result.scores == []
            continue
        conditional = token_logprobs(scorer.model, question + separator + answer + separator, ids)
        unconditional = token_logprobs(scorer.model, question + separator, ids)
        assert torch.allclose(torch.tensor(result.scores), conditional - unconditional, atol=1e-4)


def test_scores_match_two_separate_passes(tiny_scorer):
    assert_scores_match_two_separate_passes(tiny_scorer, COTS)


def test_long_cots_are_scored_in_windows_within_the_context(tiny_lm_dir, monkeypatch):
    scorer = CTSScorer(tiny_lm_dir, device="cpu", max_length=32, batch_size=3, progress=False)
    widths = []
    original = scorer._target_logprobs

    def spy(sequences, n_scored):
        widths.extend(len(seq) for seq in sequences)
        return original(sequences, n_scored)

    monkeypatch.setattr(scorer, "_target_logprobs", spy)
    long_cot = CoT(" ".join(f"Step {i}: add {i} apples." for i in range(12)), COTS[0].question, "78")
    scored = scorer.score([long_cot, COTS[0]])
    assert max(widths) <= 32 and len(widths) > 4
    assert all(len(s.scores) == len(s.token_ids) > 0 and all(map(math.isfinite, s.scores)) for s in scored)
    assert scorer.score([long_cot, COTS[0]]) == scored


@pytest.mark.parametrize(("n", "ratio", "expected"), [
    (10, 0.7, 7), (10, 0.9, 9), (5, 0.9, 5), (5, 0.5, 3), (7, 0.5, 4), (3, 0.1, 1), (1, 0.5, 1), (0, 0.5, 0),
])
def test_keep_count_rounds_half_up_and_keeps_one(n, ratio, expected):
    assert keep_count(n, ratio) == expected


def test_unit_selection_keeps_order_count_and_nesting():
    scores = [0.5, 0.0, 2.0, -1.0, 0.0, 2.0, 0.3, 1.0, 0.1]
    previous: set[int] = set(range(len(scores)))
    for ratio in RATIOS:
        kept = keep_units(scores, ratio)
        assert kept == sorted(kept) and len(kept) == keep_count(len(scores), ratio)
        assert set(kept) <= previous
        previous = set(kept)
    # ties go to the earlier unit: 2.0 at 2 and 5, only one is kept
    assert keep_units(scores, 0.1) == [2]
    assert keep_units([0.0] * 4, 0.5) == [0, 1]
    assert keep_units([], 0.5) == []


def test_units_glue_whitespace_and_split_characters_to_the_next_token(tiny_scorer):
    ids = tiny_scorer.tokenizer(COTS[2].text, add_special_tokens=False).input_ids
    pieces = [tiny_scorer.tokenizer.decode([ids[p] for p in unit]) for unit in tiny_scorer.units(ids)]
    assert "".join(pieces) == COTS[2].text
    assert all(piece.strip() and "\ufffd" not in piece for piece in pieces)
    assert " 3" in pieces and " ≈" in pieces  # a space token before a digit; "≈" is two byte pieces


def test_compression_on_tiny_model_keeps_text_order_count_and_nesting(tiny_scorer):
    compressed = tiny_scorer.compress(COTS, RATIOS)
    for cot, scored, texts in zip(COTS, tiny_scorer.score(COTS), compressed):
        assert set(texts) == set(RATIOS)
        if not cot.text:
            assert all(text == "" for text in texts.values())
            continue
        n_units = len(tiny_scorer.units(scored.token_ids))
        selections = tiny_scorer.selections(scored, RATIOS)
        previous = set(range(len(scored.token_ids)))
        for ratio in RATIOS:
            kept = selections[ratio]
            assert kept == sorted(kept) and set(kept) <= previous
            previous = set(kept)
            kept_units = [unit for unit in tiny_scorer.units(scored.token_ids) if set(unit) <= set(kept)]
            assert len(kept_units) == keep_count(n_units, ratio)
            assert sum(map(len, kept_units)) == len(kept)  # whole units only
            assert is_subsequence(texts[ratio], cot.text) and texts[ratio] == texts[ratio].lstrip()
            assert "\ufffd" not in texts[ratio]
        assert tiny_scorer.compress([cot], [1.0])[0][1.0] == cot.text


def test_compression_is_deterministic(tiny_lm_dir, tiny_scorer):
    first = tiny_scorer.compress(COTS, RATIOS)
    assert tiny_scorer.compress(COTS, RATIOS) == first
    assert CTSScorer(tiny_lm_dir, device="cpu", progress=False).compress(COTS, RATIOS) == first


def test_registered_under_its_method_name():
    assert scorer_class("cts") is CTSScorer and CTSScorer.output_folder == "CTS_Compression"


def test_embedded_smollm2_compresses_short_cots(smollm2_dir):
    scorer = CTSScorer(smollm2_dir, device="cpu", progress=False)
    assert_scores_match_two_separate_passes(scorer, COTS[:2])
    compressed = scorer.compress(COTS[:2], RATIOS)
    for cot, texts in zip(COTS, compressed):
        lengths = [len(scorer.tokenizer(texts[r], add_special_tokens=False).input_ids) for r in RATIOS]
        assert all(texts[r] and is_subsequence(texts[r], cot.text) for r in RATIOS)
        assert lengths == sorted(lengths, reverse=True) and lengths[-1] < lengths[0]


# --- the stage: CTS_data_get.py ---

def prediction(index: int, question: str, output: str, answer: str, correct: bool) -> dict:
    return {"id": f"gsm8k-train-{index}",
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": ""}],
            "answer": answer, "prompt": f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
            "model_output": output, "prediction": answer if correct else "1",
            "cot_length": len(output.split()), "accuracy": correct}


def write_stage1(root: Path, model_dir: Path) -> Path:
    samples = root / "tiny" / "gsm8k" / "135m" / "Original" / "train" / "samples"
    samples.mkdir(parents=True)
    records = [
        prediction(0, COTS[0].question, COTS[0].text + "\n\nThe final answer is: $\\boxed{72}$", "72", True),
        prediction(1, COTS[1].question, COTS[1].text + "\n\nThe final answer is: $\\boxed{10}$", "10", True),
        prediction(2, "What is 7 times 6?", "7 x 6 = 40.\n\nThe final answer is: $\\boxed{40}$", "42", False),
        prediction(3, "Tom has 3 bags of 5 apples and eats 2. How many apples are left?",
                   "Tom has 3 x 5 = 15 apples.\nAfter eating 2 apples, 15 - 2 = 13 apples are left.\n\n"
                   "The final answer is: $\\boxed{13}$", "13", True),
        prediction(4, "What is 1 + 1?", "", "2", False),
    ]
    (samples / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / "metrics.json").write_text(json.dumps({"model_path": str(model_dir)}))
    return samples / "predictions.jsonl"


def stage_args(predictions: Path, model_dir: Path, *extra) -> list[str]:
    return ["--input_data", str(predictions), "--reference_model", str(model_dir), "--device", "cpu", *extra]


def test_stage_writes_every_ratio_file_and_reruns_identically(tiny_lm_dir, tmp_path):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    summary = cts_stage.main(stage_args(predictions, tiny_lm_dir))
    folder = tmp_path / "tiny" / "gsm8k" / "135m" / "CTS_Compression"
    assert summary["n_predictions"] == 5 and summary["n_correct"] == 3 and summary["n_compressed"] == 3
    means = []
    for ratio in RATIOS:
        lines = [json.loads(line) for line in layout.ratio_file(folder, ratio).read_text().splitlines()]
        assert [line["id"] for line in lines] == ["gsm8k-train-0", "gsm8k-train-1", "gsm8k-train-3"]
        assert all(set(line) == FIELDS and line["is_correct"] is True for line in lines)
        assert all(line["compressed_cot_tokens"] < line["original_cot_tokens"] for line in lines)
        means.append(sum(line["compression_rate"] for line in lines) / len(lines))
    assert means == sorted(means, reverse=True) and len(set(means)) == len(means)
    first = {ratio: layout.ratio_file(folder, ratio).read_bytes() for ratio in RATIOS}

    rerun = tmp_path / "rerun"
    result = subprocess.run([sys.executable, "CTS_data_get.py", *stage_args(predictions, tiny_lm_dir),
                             "--output_data", str(rerun)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "train_outputs_compressed_ratio_" in result.stdout
    assert {ratio: layout.ratio_file(rerun, ratio).read_bytes() for ratio in RATIOS} == first


def test_single_compression_ratio_and_output_folder(tiny_lm_dir, tmp_path):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    out = tmp_path / "out"
    cts_stage.main(stage_args(predictions, tiny_lm_dir, "--compression_ratio", "0.5", "--output_data", str(out)))
    assert sorted(p.name for p in out.glob("train_outputs_*")) == ["train_outputs_compressed_ratio_0.5.jsonl"]
    # the formatted file written next to the predictions is an input too, with the same result
    formatted = predictions.with_name("predictions_formatted.jsonl")
    cts_stage.main(stage_args(formatted, tiny_lm_dir, "--compression_ratio", "0.5",
                              "--output_data", str(out / "again")))
    assert layout.ratio_file(out / "again", 0.5).read_bytes() == layout.ratio_file(out, 0.5).read_bytes()
    assert cts_stage.chosen_ratios(0.3, [0.9, 0.5]) == [0.9, 0.5, 0.3]
    assert cts_stage.chosen_ratios(None, None) == list(RATIOS)
    assert cts_stage.default_output_folder(Path("a/file.jsonl")) == Path("a/CTS_Compression")


def not_a_causal_lm(tmp_path: Path) -> Path:
    from transformers import BertConfig

    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, architectures=["BertForTokenClassification"])
    config.save_pretrained(tmp_path / "classifier")
    return tmp_path / "classifier"


BAD_INPUTS = {
    "ratio above 1": (lambda tmp, p, m: stage_args(p, m, "--compression_ratio", "1.5"), r"\(0, 1\), got 1.5"),
    "ratio zero": (lambda tmp, p, m: stage_args(p, m, "--ratios", "0", "0.5"), r"\(0, 1\), got 0.0"),
    "reference missing": (lambda tmp, p, m: stage_args(p, tmp / "models" / "nope"), "download_models.py --embedded"),
    "not a causal LM": (lambda tmp, p, m: stage_args(p, not_a_causal_lm(tmp)), "not a causal LM"),
    "no metrics.json": (lambda tmp, p, m: (p.with_name("metrics.json").unlink(), stage_args(p, m))[1],
                        "pass --tokenizer-path"),
    "unknown flag": (lambda tmp, p, m: stage_args(p, m, "--ratio", "0.5"), "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_error(case, tiny_lm_dir, tmp_path, capsys):
    make_args, message = BAD_INPUTS[case]
    args = make_args(tmp_path, write_stage1(tmp_path, tiny_lm_dir), tiny_lm_dir)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cts_stage.main, args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not list(tmp_path.rglob("train_outputs_*"))


def test_missing_input_names_the_stage_that_writes_it(tmp_path):
    result = subprocess.run([sys.executable, "CTS_data_get.py", "--input_data", str(tmp_path / "nope.jsonl")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "not found" in lines[0] and "evaluation.py --data-type train" in lines[0]


def test_the_reference_model_defaults_to_the_model_stage_1_ran_and_says_so(tiny_lm_dir, tmp_path, capsys):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    summary = cts_stage.main(["--input_data", str(predictions), "--device", "cpu", "--ratios", "0.5"])
    assert summary["n_compressed"] == 3
    assert f"CTS reference model: {tiny_lm_dir} (the model stage 1 recorded" in capsys.readouterr().out
    # nothing recorded: refused, naming what to pass
    (predictions.parent / "metrics.json").unlink()
    with pytest.raises(UsageError, match="no --reference_model, and no metrics.json beside"):
        cts_stage.main(["--input_data", str(predictions), "--device", "cpu", "--ratios", "0.5"])


def test_a_failed_run_leaves_no_lock_and_no_empty_output_folder(tiny_lm_dir, tmp_path):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError):
        cts_stage.main(stage_args(predictions, tmp_path / "no-such-model"))
    import shutil

    weightless = tmp_path.parent / f"{tmp_path.name}-weightless"  # a config that passes the early check
    shutil.copytree(tiny_lm_dir, weightless, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(Exception):  # fails loading the weights, inside the locked section
        cts_stage.main(stage_args(predictions, weightless))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_the_prompt_format_message_is_true_about_the_file(tmp_path, capsys):
    from tokenskip.prompting.prompts import recorded_format

    assert recorded_format(None, tmp_path / "metrics.json") == "qwen"
    assert f"there is no {tmp_path / 'metrics.json'} to read the prompt format from" in capsys.readouterr().out
    (tmp_path / "metrics.json").write_text("{}")
    recorded_format(None, tmp_path / "metrics.json")
    assert f"{tmp_path / 'metrics.json'} records no prompt format" in capsys.readouterr().out

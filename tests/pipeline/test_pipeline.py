"""The demo's whole chain on a CPU, shortened: stage-1 CoTs from the sample set -> CTS compression ->
LLaMA-Factory data -> `llamafactory-cli train` (3 steps) -> the adapter and the two baselines
evaluated -> the report. `scripts/demo.sh` runs it through the same stage scripts and eval.sh a
GPU run uses; each test below checks one stage's outputs of that single run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.reporting.tables import POINTS_KEY

TRAIN_QUESTIONS = 16
TEST_QUESTIONS = 3
EVAL_RATIOS = (0.9, 0.5)
DATASET_NAME = "mydataset_compressed_gsm8k_cts_qwen_135M"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, smollm2_dir) -> Path:
    root = tmp_path_factory.mktemp("demo")
    env = {
        **os.environ,
        "DEMO_DIR": str(root),
        "PATHS_ENV": str(root / "no-paths.env"),  # ignore the checkout's models/paths.env: CTS, offline
        "HF_HOME": str(root / "hf"),
        "TRAIN_QUESTIONS": str(TRAIN_QUESTIONS),
        "TEST_QUESTIONS": str(TEST_QUESTIONS),
        "STAGE1_TOKENS": "96",
        "EVAL_TOKENS": "24",
        "EVAL_RATIOS": " ".join(map(str, EVAL_RATIOS)),
        "BASELINE_RATIOS": " ".join(map(str, EVAL_RATIOS)),
        "TRAIN_OVERRIDES": "max_steps=3",
    }
    result = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=1500)
    (root / "demo.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"demo.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return root


def run_dir(demo: Path) -> Path:
    return demo / "SmolLM2-135M-Instruct" / "gsm8k" / "135m"


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stage_1_collects_graded_cots(demo):
    records = read_lines(run_dir(demo) / "Original" / "train" / "samples" / "predictions.jsonl")
    assert len(records) == TRAIN_QUESTIONS
    assert any(r["accuracy"] for r in records), "the embedded model must solve some sample questions"


def test_stage_2_compresses_with_cts_and_says_so(demo):
    assert "with cts (LLMLingua-2 weights are absent" in (demo / "demo.log").read_text()
    rates = {}
    for ratio in (0.9, 0.8, 0.7, 0.6, 0.5):
        lines = read_lines(run_dir(demo) / "CTS_Compression" / f"train_outputs_compressed_ratio_{ratio}.jsonl")
        assert lines and all(line["is_correct"] for line in lines)
        rates[ratio] = sum(line["compression_rate"] for line in lines) / len(lines)
    assert rates[0.5] < rates[0.7] < rates[0.9] <= 1.0


def test_stage_3_registers_the_training_data(demo):
    data = demo / "llamafactory" / "data"
    info = json.loads((data / "dataset_info.json").read_text())
    records = json.loads((data / info[DATASET_NAME]["file_name"]).read_text())
    formatted = read_lines(run_dir(demo) / "Original" / "train" / "samples" / "predictions_formatted.jsonl")
    assert len(records) == 6 * len(formatted)  # MIX=all: γ = 1.0 and the five ratios
    assert sum("<|eot_id|>0.5<|eot_id|>" in r["input"] for r in records) == len(formatted)


def test_stage_4_trains_an_adapter(demo):
    adapter = demo / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "trainer_state.json").read_text())["global_step"] == 3


def test_stage_5_evaluates_the_adapter_with_the_ratio_tag(demo):
    for ratio in (1.0, *EVAL_RATIOS):
        samples = run_dir(demo) / "TokenSkip" / str(ratio) / "samples"
        records = read_lines(samples / "predictions.jsonl")
        metrics = json.loads((samples / "metrics.json").read_text())
        assert len(records) == TEST_QUESTIONS and metrics["use_adapter"] and metrics["label"] == "TokenSkip (cts)"
        tag = f"<|eot_id|>{ratio}<|eot_id|><|im_end|>" if ratio < 1 else "<|eot_id|>"
        assert all((tag in r["prompt"]) == (ratio < 1) for r in records)


def test_baselines_ran_at_every_ratio(demo):
    original = json.loads((run_dir(demo) / "Original" / "test" / "samples" / "metrics.json").read_text())
    for ratio in EVAL_RATIOS:
        truncation = json.loads((run_dir(demo) / "Truncation" / str(ratio) / "samples" / "metrics.json").read_text())
        assert truncation["decoding"]["max_new_tokens"] == max(1, round(ratio * original["avg_cot_length"]))
        prompt = read_lines(run_dir(demo) / "PromptReduction" / str(ratio) / "samples" / "predictions.jsonl")
        assert all(f"reduce {round((1 - ratio) * 100)}% of the words" in r["prompt"] for r in prompt)


def test_report_is_computed_from_the_metrics(demo):
    from PIL import Image

    markdown = (demo / "results.md").read_text()
    original = json.loads((run_dir(demo) / "Original" / "test" / "samples" / "metrics.json").read_text())
    adapter = json.loads((run_dir(demo) / "TokenSkip" / "0.5" / "samples" / "metrics.json").read_text())
    actual = adapter["avg_cot_length"] / original["avg_cot_length"]
    row = next(line for line in markdown.splitlines() if line.startswith("| TokenSkip (cts) | 0.5 |"))
    assert f"| {adapter['avg_cot_length']:.1f} | {actual:.2f} |" in row
    for method in ("Original", "Truncation", "Prompt-based"):
        assert f"| {method} |" in markdown
    image = Image.open(demo / "results.png")
    expected_points = 1 + (1 + len(EVAL_RATIOS)) + 2 * len(EVAL_RATIOS)
    assert image.format == "PNG" and image.text[POINTS_KEY] == str(expected_points)

"""The whole loop on a CPU through the stage scripts users run: stage-1 CoTs from the sample set ->
CTS compression -> LLaMA-Factory data -> `llamafactory-cli train` (a few steps) -> the adapter
evaluated with the γ tag in its prompt. Each stage is its own test, in order, sharing one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

TRAIN_QUESTIONS = 16
DATASET_NAME = "mydataset_compressed_gsm8k_cts_qwen_135M"


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_dir):
    """Settings shared by the stages, and a way to run a script with them."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "lf" / "data").mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATHS_ENV": str(root / "no-paths.env"),  # ignore the checkout's models/paths.env
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
        "OUTPUT_DIR": str(root / "out" / "smol" / "gsm8k") + "/",
        "MODEL_PATH": str(smollm2_dir),
        "MODEL_SIZE": "135m",
        "BENCHMARK": "gsm8k",
        "EVAL_BATCH_SIZE": "16",
    }

    def script(name: str, **overrides: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(ROOT / name)], env={**env, **overrides}, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    script.root = root
    script.model_dir = Path(env["OUTPUT_DIR"]) / "135m"
    return script


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_1_stage_one_collects_graded_cots(run):
    run("scripts/1_generate_train_cots.sh", DATA_PATH=str(ROOT / "datasets" / "sample" / "train.jsonl"),
        MAX_NUM_EXAMPLES=str(TRAIN_QUESTIONS), MAX_NEW_TOKENS="96")
    records = read_lines(run.model_dir / "Original" / "train" / "samples" / "predictions.jsonl")
    assert len(records) == TRAIN_QUESTIONS
    assert any(r["accuracy"] for r in records), "the embedded model must solve some sample questions"


def test_2_cts_compresses_at_every_ratio(run, smollm2_dir):
    run("scripts/2_compress.sh", METHOD="cts", REFERENCE_MODEL=str(smollm2_dir))
    folder = run.model_dir / "CTS_Compression"
    rates = {}
    for ratio in (0.9, 0.8, 0.7, 0.6, 0.5):
        lines = read_lines(folder / f"train_outputs_compressed_ratio_{ratio}.jsonl")
        assert lines and all(line["is_correct"] for line in lines)
        rates[ratio] = sum(line["compression_rate"] for line in lines) / len(lines)
    assert rates[0.5] < rates[0.7] < rates[0.9] <= 1.0


def test_3_conversion_registers_the_dataset(run):
    run("scripts/3_convert.sh", METHOD="cts", MIX="all", LLAMAFACTORY_DIR=str(run.root / "lf"))
    info = json.loads((run.root / "lf" / "data" / "dataset_info.json").read_text())
    records = json.loads((run.root / "lf" / "data" / info[DATASET_NAME]["file_name"]).read_text())
    formatted = read_lines(run.model_dir / "Original" / "train" / "samples" / "predictions_formatted.jsonl")
    assert len(records) == 6 * len(formatted)  # --mix all: γ = 1.0 and the five ratios
    assert sum("<|eot_id|>0.5<|eot_id|>" in r["input"] for r in records) == len(formatted)


def test_4_llamafactory_trains_an_adapter(run, smollm2_dir):
    adapter = run.root / "adapter"
    overrides = [f"model_name_or_path={smollm2_dir}", f"dataset={DATASET_NAME}",
                 f"dataset_dir={run.root / 'lf' / 'data'}", f"output_dir={adapter}", "max_steps=3"]
    run("scripts/4_train.sh", CONFIG=str(ROOT / "configs" / "examples" / "train_lora" / "smollm2_135m_lora_sft_cpu.yaml"),
        TRAIN_OVERRIDES=" ".join(overrides))
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()


def test_5_adapter_is_evaluated_with_the_ratio_tag(run):
    adapter = run.root / "adapter"
    run("scripts/5_evaluate.sh", ADAPTER_PATH=str(adapter), RATIOS="0.5",
        DATA_PATH=str(ROOT / "datasets" / "sample" / "test.jsonl"), MAX_NUM_EXAMPLES="3", MAX_NEW_TOKENS="24")
    samples = run.model_dir / "TokenSkip" / "0.5" / "samples"
    records = read_lines(samples / "predictions.jsonl")
    metrics = json.loads((samples / "metrics.json").read_text())
    assert len(records) == 3 and metrics["use_adapter"] and metrics["adapter_path"] == str(adapter)
    assert all("<|eot_id|>0.5<|eot_id|><|im_end|>" in r["prompt"] for r in records)

"""LoRA adapters trained by LLaMA-Factory itself (`llamafactory-cli train`), a few steps on the
embedded SmolLM2-135M-Instruct: what stage 4 hands to stage 5, small enough for a test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "examples" / "train_lora" / "smollm2_135m_lora_sft_cpu.yaml"
SAMPLE_TRAIN = ROOT / "datasets" / "sample" / "train.jsonl"
DATASET = "tokenskip_test_adapter"


def write_dataset(folder: Path, n: int = 32, ratios: tuple[float, ...] = (1.0, 0.5), ratio_format: str = "eot") -> Path:
    """LLaMA-Factory data from the sample set's reference solutions, with the ratio tag in the input,
    as get_llamafactory_input.py writes it (the toolkit's own record builder)."""
    from tokenskip.stages.llamafactory import DATASET_COLUMNS, training_record

    rows = [json.loads(line) for line in SAMPLE_TRAIN.read_text().splitlines()][:n]
    records = []
    for i, row in enumerate(rows):
        ratio = ratios[i % len(ratios)]
        cot, answer = row["answer"].split("####")
        records.append(training_record(row["question"], cot.strip(), answer.strip(), ratio, "qwen",
                                       ratio_format=ratio_format))
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / f"{DATASET}.json").write_text(json.dumps(records, indent=1))
    (data / "dataset_info.json").write_text(json.dumps(
        {DATASET: {"file_name": f"{DATASET}.json", "columns": DATASET_COLUMNS}}))
    return data


def train_adapter(model_dir: Path, out: Path, *, rank: int, steps: int = 6, learning_rate: float = 2e-3,
                  timeout: int = 900, ratio_format: str = "eot", extra: tuple[str, ...] = ()) -> Path:
    """`llamafactory-cli train` on the CPU recipe with `rank` (α = 2·rank); returns the adapter folder."""
    if (out / "adapter_model.safetensors").is_file():
        return out
    data = write_dataset(out.parent / f"{out.name}-data", ratio_format=ratio_format)
    cli = Path(sys.executable).parent / "llamafactory-cli"
    overrides = [f"model_name_or_path={model_dir}", f"dataset={DATASET}", f"dataset_dir={data}",
                 f"output_dir={out}", f"lora_rank={rank}", f"lora_alpha={2 * rank}", f"max_steps={steps}",
                 f"learning_rate={learning_rate}", "logging_steps=1", "warmup_ratio=0", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    result = subprocess.run([str(cli), "train", str(RECIPE), *overrides], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0 or not (out / "adapter_model.safetensors").is_file():
        raise RuntimeError(f"llamafactory-cli train failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return out

"""Where each stage's files live: the original TokenSkip outputs tree, in one place.

    {output-dir}/{model-size}/Original/{train|test}/samples/      the base model (stage 1, stage 5)
    {output-dir}/{model-size}/TokenSkip/{γ}/samples/              the adapter at γ (stage 5)
    {output-dir}/{model-size}/{Truncation|PromptReduction}/{γ}/   the paper's baselines
    {output-dir}/{model-size}/{Compression|...}/                   stage 2's ratio files (Scorer.output_folder)
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_OUTPUT_DIR = "outputs/Qwen2.5-7B-Instruct/{benchmark}/"
# run folder for each evaluation method (report.py reads them back)
RUN_FOLDERS = {"original": "Original", "tokenskip": "TokenSkip", "truncation": "Truncation",
               "prompt": "PromptReduction"}


def default_model_dir(benchmark: str, model_size: str) -> Path:
    """`{output-dir}/{model-size}` for evaluation.py's default --output-dir."""
    return Path(DEFAULT_OUTPUT_DIR.format(benchmark=benchmark)) / model_size


def stage1_samples(model_dir: Path) -> Path:
    """The folder holding stage 1's predictions.jsonl (and stage 2's predictions_formatted.jsonl)."""
    return model_dir / RUN_FOLDERS["original"] / "train" / "samples"

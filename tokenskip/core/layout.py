"""The outputs tree: every stage asks this module for its paths, and report.py reads them back.

The original TokenSkip layout, kept so that existing trees and scripts keep working:

    {output-dir}/{model-size}/Original/{train|test}/samples/        the base model (stage 1, stage 5)
    {output-dir}/{model-size}/Original/{split}/ratio_{γ}/samples/   the base model with a γ tag
    {output-dir}/{model-size}/TokenSkip/{γ}/samples/                the adapter at γ (stage 5; .../train/ on train)
    {output-dir}/{model-size}/{Truncation|PromptReduction}/{γ}/samples/   the paper's baselines
    {output-dir}/{model-size}/{BudgetForcing|BudgetPrompt}/{γ}/samples/    budget baselines (γ x the base CoT)
    {output-dir}/{model-size}/{Truncation|BudgetForcing|BudgetPrompt}/{N}tok/samples/   at a budget of N tokens
    {output-dir}/{model-size}/{ChainOfDraft|NoThinking}/samples/          baselines that take no γ
    {output-dir}/{model-size}/{Compression|NER_Enhanced_Compression|CTS_Compression}/
                                                                     stage 2's ratio files, per method

Inside a samples folder: predictions.jsonl, metrics.json, run.json, generation_log.jsonl; stage 2
adds predictions_correct.jsonl and predictions_formatted.jsonl next to stage 1's predictions.
Both directions live here: `run_dir` builds a run's folder and `place` reads method, γ and split
back from a path, so the two can never disagree. Shell scripts ask through `python -m tokenskip.core.layout`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenskip.core.ratios import ratio_tag

DEFAULT_OUTPUT_DIR = "outputs/Qwen2.5-7B-Instruct/{benchmark}/"
# run folder for each evaluation method (report.py reads them back)
RUN_FOLDERS = {"original": "Original", "tokenskip": "TokenSkip", "truncation": "Truncation",
               "prompt": "PromptReduction", "budget": "BudgetForcing", "budget-prompt": "BudgetPrompt",
               "cod": "ChainOfDraft", "nothinking": "NoThinking"}
# methods with a folder per γ ({folder}/{γ}/samples/); the methods that take no γ have one ({folder}/samples/)
RATIO_METHODS = ("tokenskip", "truncation", "prompt", "budget", "budget-prompt")
RATIO_FREE_METHODS = ("cod", "nothinking")
# the baselines that take a token budget (γ x the base model's mean CoT tokens, or N given in tokens)
BUDGETED_METHODS = ("truncation", "budget", "budget-prompt")
# a budgeted baseline given its budget in tokens (--budget-tokens N) instead of γ: {folder}/{N}tok/samples/
BUDGET_FOLDER = "{tokens}tok"
METHOD_OF_FOLDER = {folder: method for method, folder in RUN_FOLDERS.items()}
# stage 2's output folder per compression method (next to Original/)
COMPRESSION_FOLDERS = {"llmlingua2": "Compression", "ner": "NER_Enhanced_Compression", "cts": "CTS_Compression",
                       "cts_authors": "CTS_Authors_Compression"}

SAMPLES = "samples"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN_SETTINGS = "run.json"
GENERATION_LOG = "generation_log.jsonl"
CORRECT = "predictions_correct.jsonl"  # stage 2: stage 1's correct answers
FORMATTED = "predictions_formatted.jsonl"  # stage 2: the CoTs it compressed
COMPRESSION_SUMMARY = "compression_summary.json"
RATIO_FILE_STEM = "train_outputs_compressed_ratio"  # stage 2's ratio files: {stem}_{γ}.jsonl
NER_RATIO_FILE_STEM = "train_outputs_ner_enhanced_compressed_ratio"  # NER's: the hybrid design's names
LOCK_FILE = ".lock"
SHARDS = "shards"  # a sharded run's shard folders, inside the run's own folder (tokenskip/core/shards.py)
LOGS = "logs"  # data-parallel ranks' output, inside the model's folder
# beside the model folders, under outputs/
TRAINING_DATA = "mydataset_compressed_{benchmark}_{method}_{model_type}_{size}.json"  # stage 3's default file
ADAPTERS = "adapters"  # outputs/adapters/<name>/: where the stage-4 recipes write (their output_dir)
REPORT_MARKDOWN = "results.md"  # report.py, in the folder it reads
REPORT_PLOT = "results.png"
REPORT_ADHERENCE_PLOT = "results_adherence.png"
REPORT_JSON = "results.json"  # report.py --format json


def training_data_file(benchmark: str, method: str, model_type: str, model_size: str) -> Path:
    """Stage 3's default output: `outputs/mydataset_compressed_{benchmark}_{method}_{type}_{SIZE}.json`."""
    return Path("outputs") / TRAINING_DATA.format(benchmark=benchmark, method=method, model_type=model_type,
                                                   size=model_size.upper())


def model_dir(output_dir: str | Path, model_size: str) -> Path:
    """`{output-dir}/{model-size}`: the folder holding one model's method folders."""
    return Path(output_dir) / model_size


def default_model_dir(benchmark: str, model_size: str) -> Path:
    """`{output-dir}/{model-size}` for evaluation.py's default --output-dir."""
    return model_dir(DEFAULT_OUTPUT_DIR.format(benchmark=benchmark), model_size)


def run_dir(model_folder: Path, *, method: str, ratio: float, data_type: str,
            budget_tokens: int | None = None) -> Path:
    """A run's folder (its files are in `samples/` below it). `method` is a RUN_FOLDERS key, or
    "ratio-tag" for the base model with a γ tag; train-split adapter runs get their own folder. A baseline
    given a budget in tokens (`budget_tokens`) is filed by that budget instead of γ."""
    if budget_tokens is not None:
        if method not in BUDGETED_METHODS:
            raise ValueError(f"a token budget files a budgeted baseline's run, not a {method} run")
        folder = model_folder / RUN_FOLDERS[method] / BUDGET_FOLDER.format(tokens=budget_tokens)
        return folder / "train" if data_type == "train" else folder
    if method in RATIO_METHODS:
        folder = model_folder / RUN_FOLDERS[method] / ratio_tag(ratio)
        return folder / "train" if data_type == "train" else folder
    if method in RATIO_FREE_METHODS:
        folder = model_folder / RUN_FOLDERS[method]
        return folder / "train" if data_type == "train" else folder
    folder = model_folder / RUN_FOLDERS["original"] / data_type
    return folder if ratio == 1.0 else folder / f"ratio_{ratio_tag(ratio)}"


def shard_dir(folder: Path, index: int, count: int) -> Path:
    """`{folder}/shards/{i}-of-{K}/`: where shard i of K of the job writing `folder` writes."""
    return folder / SHARDS / f"{index}-of-{count}"


def logs_dir(model_folder: Path) -> Path:
    return model_folder / LOGS


def samples_dir(run_folder: Path) -> Path:
    return run_folder / SAMPLES


def original_samples(model_folder: Path, data_type: str) -> Path:
    """The base model's run on a split, whose metrics the truncation baseline scales."""
    return samples_dir(run_dir(model_folder, method="original", ratio=1.0, data_type=data_type))


def stage1_samples(model_folder: Path) -> Path:
    """The folder holding stage 1's predictions.jsonl (and stage 2's predictions_formatted.jsonl)."""
    return original_samples(model_folder, "train")


def stage1_predictions(model_folder: Path) -> Path:
    return stage1_samples(model_folder) / PREDICTIONS


def compression_dir(model_folder: Path, method: str) -> Path:
    return model_folder / COMPRESSION_FOLDERS[method]


def ratio_file(folder: Path, ratio: float, stem: str = RATIO_FILE_STEM) -> Path:
    return folder / f"{stem}_{ratio}.jsonl"


def model_dir_of_predictions(predictions: Path) -> Path | None:
    """The `{output-dir}/{model-size}` folder holding a stage-1 predictions file, when it sits in the layout."""
    for parent in predictions.parents:
        if parent.name == RUN_FOLDERS["original"]:
            return parent.parent
    return None


def run_predictions(path: Path) -> Path:
    """The predictions file a user means by `path`: a run folder, its samples/ folder, or the file itself."""
    if path.is_dir() and (path / SAMPLES).is_dir():
        return path / SAMPLES / PREDICTIONS
    if path.is_dir():
        return path / PREDICTIONS
    return path


def is_run_predictions(path: Path) -> bool:
    """Whether `path` is the predictions.jsonl of a run folder (one that evaluation.py made)."""
    return path.name == PREDICTIONS and (path.parent / RUN_SETTINGS).is_file()


@dataclass(frozen=True)
class Place:
    """What a file's position in the tree says about its run."""

    group: Path  # the `{output-dir}/{model-size}` folder holding the method folders
    method: str  # a RUN_FOLDERS key, or "ratio-tag"
    ratio: float  # 1.0 for the methods without γ and for runs at a token budget
    data_type: str | None  # "train", "test", or None when the path does not say
    budget_tokens: int | None = None  # a baseline run at a budget given in tokens ({N}tok/)


def place(metrics_path: Path) -> Place | None:
    """Read a run's group, method, γ and split back from the path of a file in its samples folder
    (the inverse of `run_dir`); None when the path is not inside a method folder."""
    parts = metrics_path.parts
    index = max((i for i, part in enumerate(parts) if part in METHOD_OF_FOLDER), default=None)
    if index is None:
        return None
    method = METHOD_OF_FOLDER[parts[index]]
    rest = parts[index + 1:-1]  # between the method folder and the file
    group = Path(*parts[:index]) if index else Path(".")
    if method == "original":
        data_type = rest[0] if rest and rest[0] in ("train", "test") else None
        tagged = next((part for part in rest if part.startswith("ratio_")), None)
        ratio = _float(tagged.removeprefix("ratio_")) if tagged else 1.0
        return Place(group, "ratio-tag" if tagged else "original", ratio if ratio is not None else 1.0, data_type)
    if method in RATIO_FREE_METHODS:
        split = "train" if rest[:1] == ("train",) else ("test" if rest[:1] == (SAMPLES,) else None)
        return Place(group, method, 1.0, split)
    split = "train" if "train" in rest[1:] else ("test" if rest[1:2] == (SAMPLES,) else None)
    tokens = _budget_tokens(rest[0]) if rest and method in BUDGETED_METHODS else None
    if tokens is not None:
        return Place(group, method, 1.0, split, budget_tokens=tokens)
    ratio = _float(rest[0]) if rest else None
    if ratio is None:
        return None
    return Place(group, method, ratio, split)


def _budget_tokens(part: str) -> int | None:
    """N from a `{N}tok` folder name (BUDGET_FOLDER); None for any other name."""
    prefix, suffix = BUDGET_FOLDER.split("{tokens}")
    digits = part.removeprefix(prefix).removesuffix(suffix)
    if not (part.startswith(prefix) and part.endswith(suffix) and digits.isdigit()):
        return None
    return int(digits)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# ---------------------------------------------------------------- outputs/README.md


def outputs_readme() -> str:
    """outputs/README.md, written from the names above (tests/core compares the committed file with it)."""
    runs = [f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['original']}/<train|test>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['original']}/<split>/ratio_<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['tokenskip']}/<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['tokenskip']}/<γ>/train/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['truncation']}/<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['prompt']}/<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['budget']}/<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['budget-prompt']}/<γ>/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/<{RUN_FOLDERS['truncation']}|{RUN_FOLDERS['budget']}|"
            f"{RUN_FOLDERS['budget-prompt']}>/{BUDGET_FOLDER.format(tokens='<N>')}/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['cod']}/{SAMPLES}/",
            f"outputs/<model>/<benchmark>/<size>/{RUN_FOLDERS['nothinking']}/{SAMPLES}/"]
    notes = ["the base model, γ = 1 (stage 1 on train, stage 5 on test)", "the base model with the γ tag in the prompt",
             "with a LoRA adapter at γ, test split", "with a LoRA adapter at γ, train split",
             "baseline: the output cut at γ x the base model's CoT length", "baseline: the prompt asks for fewer words",
             "baseline: budget forcing, the CoT ended at that budget and the answer forced",
             "baseline: the prompt states that budget in tokens",
             "the same three at a budget given in tokens (--budget-tokens N)", "baseline: Chain-of-Draft's prompt",
             "baseline: reasoning models, the thinking block prefilled as finished"]
    width = max(map(len, runs)) + 2
    compression = [f"outputs/<model>/<benchmark>/<size>/{folder}/" for folder in COMPRESSION_FOLDERS.values()]
    cwidth = max(map(len, compression)) + 2
    lines = [
        "# outputs/", "",
        "Run results land here (git-ignored). The layout is the original TokenSkip one, extended; this file is",
        "written from `tokenskip/core/layout.py` (`python -m tokenskip.core.layout readme`).", "",
        "Evaluations (`evaluation.py`, `eval.sh`):", "", "```",
        *(f"{run:<{width}}# {note}" for run, note in zip(runs, notes)), "```", "",
        f"Each `{SAMPLES}/` folder holds `{PREDICTIONS}` (one line per question), `{METRICS}` (written only when every",
        f"question is done), `{RUN_SETTINGS}` (the settings a resumed run must match) and `{GENERATION_LOG}` (wall",
        "time and tokens per batch, for latency across resumed runs). A run sharded over processes keeps its",
        f"shards in `{SHARDS}/<i>-of-<K>/` inside its folder until they are merged; data-parallel ranks log to",
        f"`<size>/{LOGS}/`. Stage 2 adds `{CORRECT}` and `{FORMATTED}` beside stage 1's predictions.", "",
        "Compression (stage 2: `LLMLingua.py`, `llmlingua_ner.py`, `CTS_data_get.py`), one folder per method:", "",
        "```",
        *(f"{path:<{cwidth}}# {method}: {NER_RATIO_FILE_STEM if method == 'ner' else RATIO_FILE_STEM}_<γ>.jsonl, "
          f"{COMPRESSION_SUMMARY}"
          for path, method in zip(compression, COMPRESSION_FOLDERS)), "```", "",
        "Beside the model folders:", "", "```",
        f"outputs/{TRAINING_DATA.replace('{', '<').replace('}', '>')}   # stage 3's training data (default name)",
        f"outputs/{ADAPTERS}/<name>/   # stage 4: the adapters the recipes in configs/examples/ train",
        f"<any folder report.py reads>/{REPORT_MARKDOWN}, {REPORT_PLOT}, {REPORT_ADHERENCE_PLOT}   # report.py",
        f"<any folder report.py reads>/{REPORT_JSON}   # report.py --format json",
        "```", "",
        f"A folder being written holds a `{LOCK_FILE}` file: a second writer gets a one-line error naming the first.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- for the shell scripts


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tokenskip.core.layout WHAT --output-dir D --model-size S [--method M]`: print one path."""
    parser = argparse.ArgumentParser(prog="python -m tokenskip.core.layout", description=main.__doc__)
    parser.add_argument("what", choices=("model-dir", "stage1-predictions", "stage1-samples", "compression-dir",
                                         "readme"))
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--model-size", default=None)
    parser.add_argument("--method", choices=sorted(COMPRESSION_FOLDERS), default="llmlingua2")
    args = parser.parse_args(argv)
    if args.what == "readme":
        sys.stdout.write(outputs_readme())
        return
    if args.output_dir is None or args.model_size is None:
        parser.error(f"{args.what} needs --output-dir and --model-size")
    folder = model_dir(args.output_dir, args.model_size)
    path = {
        "model-dir": lambda: folder,
        "stage1-predictions": lambda: stage1_predictions(folder),
        "stage1-samples": lambda: stage1_samples(folder),
        "compression-dir": lambda: compression_dir(folder, args.method),
    }[args.what]()
    sys.stdout.write(f"{path}\n")


if __name__ == "__main__":
    main()

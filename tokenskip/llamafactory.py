"""Stage 3: compressed CoTs -> LLaMA-Factory training data, and its registration.

A training record teaches the model to answer a question at ratio γ: the input carries the same
γ tag that `evaluation.py` puts in its prompt, and the output is the CoT compressed to γ
followed by the final answer. Records are aligned by id across the original and compressed
files (the original aligned by line index, which silently pairs the wrong records when a file
differs).
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Sequence

from tokenskip import layout, prompts
from tokenskip.cli import StageParser
from tokenskip.compress import DEFAULT_RATIOS, parse_ratios, ratio_file
from tokenskip.errors import UsageError
from tokenskip.jsonio import atomic_writer, read_json, read_jsonl, write_json_atomic
from tokenskip.scorers import scorer_class

# LLaMA-Factory's alpaca columns, as the hybrid design registered them
DATASET_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def final_answer_text(answer) -> str:
    # MATH answers may come as lists from older stage-1 files
    return ", ".join(map(str, answer)) if isinstance(answer, list) else str(answer)


def training_input(question: str, ratio: float, model_type: str) -> str:
    """What follows the instruction in the user turn: the question and, for γ < 1, the ratio tag.

    Derived from the prompt `evaluation.py` builds, so that training and inference agree token
    for token (LLaMA-Factory joins instruction and input with a newline).
    """
    user = prompts.user_content(question, ratio, model_type, eos="<|eot_id|>")
    return user.removeprefix(prompts.INSTRUCTION + "\n")


def training_record(question: str, cot: str, answer, ratio: float, model_type: str) -> dict:
    return {
        "instruction": prompts.INSTRUCTION,
        "input": training_input(question, ratio, model_type),
        "output": f"{cot}{prompts.ANSWER_MARKER} $\\boxed{{{final_answer_text(answer)}}}$",
    }


def load_aligned(input_dir: Path, method: str, ratios: Sequence[float]) -> tuple[list[dict], dict[float, dict]]:
    """The formatted originals and, per ratio, the compressed lines by id; mismatches are errors."""
    scorer = scorer_class(method)
    formatted_path = layout.stage1_samples(input_dir) / "predictions_formatted.jsonl"
    originals = read_jsonl(formatted_path, what="formatted CoTs",
                           made_by=f"the compression stage ({scorer.script})")
    folder = input_dir / scorer.output_folder
    compressed: dict[float, dict] = {}
    original_ids = [record["id"] for record in originals]
    for ratio in ratios:
        path = ratio_file(folder, ratio, scorer.file_stem)
        if not path.exists():
            raise UsageError(f"{path} is missing: run {scorer.script} with ratio {ratio} first")
        by_id = {line["id"]: line for line in read_jsonl(path, what="compressed CoTs")}
        missing = [i for i in original_ids if i not in by_id]
        extra = sorted(set(by_id) - set(original_ids))
        if missing or extra:
            detail = (f"{len(missing)} ids missing (e.g. {missing[0]})" if missing else "") + (
                f"{'; ' if missing else ''}{len(extra)} unknown ids (e.g. {extra[0]})" if extra else "")
            raise UsageError(f"{path} does not match {formatted_path}: {detail}; rerun {scorer.script}")
        compressed[ratio] = by_id
    return originals, compressed


def build_records(originals: list[dict], compressed: dict[float, dict], *, model_type: str, mix: str,
                  seed: int) -> tuple[list[dict], Counter]:
    """`sample`: one γ per question drawn uniformly from {1.0} ∪ ratios (the original);
    `all`: every γ for every question. Then shuffled, with the original's seeded RNG use."""
    rng = random.Random(seed)
    choices = [1.0, *compressed]
    records, per_ratio = [], Counter()
    for original in originals:
        picked = [rng.choice(choices)] if mix == "sample" else choices
        for ratio in picked:
            if ratio == 1.0:
                record = training_record(original["messages"][0]["content"], original["cot"], original["prediction"],
                                         1.0, model_type)
            else:
                line = compressed[ratio][original["id"]]
                record = training_record(line["question"], line["compressed_cot"], line["model_answer"], ratio,
                                         model_type)
            records.append(record)
            per_ratio[ratio] += 1
    rng.shuffle(records)
    return records, per_ratio


def copy_to_llamafactory(source: Path, llamafactory_dir: Path, target_name: str | None = None) -> Path:
    data_dir = _data_dir(llamafactory_dir)
    if not source.is_file():
        raise UsageError(f"{source} does not exist: run get_llamafactory_input.py first")
    target = data_dir / (target_name or source.name)
    with atomic_writer(target, "wb") as handle, source.open("rb") as original:
        shutil.copyfileobj(original, handle)
    return target


def register_dataset(llamafactory_dir: Path, dataset_file: str) -> tuple[str, bool]:
    """Add `dataset_file` to DIR/data/dataset_info.json; returns (name, whether the file changed).

    The existing registry is merged into, never replaced; a backup of the previous version is
    kept next to it; registering the same entry twice changes nothing; a malformed registry is
    refused untouched.
    """
    data_dir = _data_dir(llamafactory_dir)
    info_path = data_dir / "dataset_info.json"
    info = read_json(info_path, what="dataset_info.json") if info_path.exists() else {}
    if not isinstance(info, dict):
        raise UsageError(f"{info_path} is not a JSON object; fix or remove it (nothing was changed)")
    name = Path(dataset_file).stem
    entry = {"file_name": Path(dataset_file).name, "columns": DATASET_COLUMNS}
    if info.get(name) == entry:
        return name, False
    if info_path.exists():
        shutil.copy2(info_path, info_path.with_name("dataset_info.json.bak"))
    write_json_atomic(info_path, {**info, name: entry})
    return name, True


def _data_dir(llamafactory_dir: Path) -> Path:
    data_dir = Path(llamafactory_dir) / "data"
    if not data_dir.is_dir():
        raise UsageError(f"{llamafactory_dir} is not a LLaMA-Factory checkout (no data/ folder); "
                         "pass the folder that holds data/dataset_info.json")
    return data_dir


def default_output_file(benchmark: str, method: str, model_type: str, model_size: str) -> Path:
    return Path("outputs") / f"mydataset_compressed_{benchmark}_{method}_{model_type}_{model_size.upper()}.json"


def build_parser() -> StageParser:
    parser = StageParser(prog="get_llamafactory_input.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--input-dir", default=None,
        help="the model's outputs folder holding Original/ and the compression folders "
             f"(default: {layout.DEFAULT_OUTPUT_DIR}{{model-size}}/)")
    add("--model-size", default="7b", help="names the default input folder and output file")
    add("--model-type", choices=prompts.MODEL_TYPES, default="qwen", help="prompt format the data is built for")
    add("--benchmark", choices=("gsm8k", "math"), default="gsm8k")
    add("--method", default="llmlingua2", help="compression method: llmlingua2, ner or cts")
    add("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), help="compressed ratios to use")
    add("--mix", choices=("sample", "all"), default="sample",
        help="sample: one γ per question, drawn uniformly from {1.0} ∪ ratios (the original); all: every γ")
    add("--seed", type=int, default=42)
    add("--output-file", default=None,
        help="default: outputs/mydataset_compressed_{benchmark}_{method}_{model_type}_{SIZE}.json")
    add("--llamafactory-dir", default=None,
        help="also copy the file into DIR/data/ and register it in DIR/data/dataset_info.json")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    scorer_class(args.method)  # an unknown method fails here, before any file is read
    ratios = parse_ratios(args.ratios)
    input_dir = Path(args.input_dir or layout.default_model_dir(args.benchmark, args.model_size))
    output_file = Path(args.output_file or default_output_file(args.benchmark, args.method, args.model_type,
                                                               args.model_size))
    if args.llamafactory_dir:
        _data_dir(Path(args.llamafactory_dir))  # refuse a wrong folder before writing anything
    originals, compressed = load_aligned(input_dir, args.method, ratios)
    records, per_ratio = build_records(originals, compressed, model_type=args.model_type, mix=args.mix,
                                       seed=args.seed)
    write_json_atomic(output_file, records, indent=1)
    counts = ", ".join(f"γ={ratio}: {per_ratio[ratio]}" for ratio in [1.0, *ratios])
    print(f"{len(records)} training records from {len(originals)} questions ({counts})")
    print(f"wrote {output_file}")
    if args.llamafactory_dir:
        target = copy_to_llamafactory(output_file, Path(args.llamafactory_dir))
        name, changed = register_dataset(Path(args.llamafactory_dir), target.name)
        print(f"copied to {target}; dataset '{name}' {'registered' if changed else 'already registered'} "
              f"in {target.parent / 'dataset_info.json'}")
    return output_file


def dataset_file_name(model_size: str) -> str:
    """The hybrid design's default file name, which its copy/register scripts assume."""
    return default_output_file("gsm8k", "llmlingua2", "qwen", model_size).name


def copy_main(argv: Sequence[str] | None = None) -> None:
    parser = StageParser(prog="copy_to_llamafactory.py", description="Copy a training file into LLaMA-Factory's data/.")
    parser.add_argument("--model-size", default="7b", help="names the default source file")
    parser.add_argument("--llamafactory-dir", default="./LLaMA-Factory")
    parser.add_argument("--source-file", default=None, help="default: outputs/<the default dataset file name>")
    parser.add_argument("--target-name", default=None, help="file name inside data/ (default: the source's)")
    args = parser.parse_args(argv)
    source = Path(args.source_file or Path("outputs") / dataset_file_name(args.model_size))
    target = copy_to_llamafactory(source, Path(args.llamafactory_dir), args.target_name)
    print(f"copied {source} to {target}")


def register_main(argv: Sequence[str] | None = None) -> None:
    parser = StageParser(prog="register_dataset.py", description="Register a training file in dataset_info.json.")
    parser.add_argument("--model-size", default="7b", help="names the default dataset file")
    parser.add_argument("--llamafactory-dir", default="./LLaMA-Factory")
    parser.add_argument("--dataset-file", default=None, help="file name inside data/ (default: the standard name)")
    args = parser.parse_args(argv)
    dataset_file = args.dataset_file or dataset_file_name(args.model_size)
    if not (Path(args.llamafactory_dir) / "data" / dataset_file).is_file():
        _data_dir(Path(args.llamafactory_dir))
        raise UsageError(f"{Path(args.llamafactory_dir) / 'data' / dataset_file} does not exist: "
                         "run copy_to_llamafactory.py first")
    name, changed = register_dataset(Path(args.llamafactory_dir), dataset_file)
    print(f"dataset '{name}' {'registered' if changed else 'was already registered'}; "
          f"use `dataset: {name}` in the training recipe")

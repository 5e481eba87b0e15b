"""Benchmark questions in the formats users already have on disk.

Three record layouts are read as they come: GSM8K as OpenAI ships it (`question`, `answer`
ending in `#### 72`), TokenSkip's own (`question`, `answer`, `cot`, `id`) and MATH / MATH-500
(`problem`, `solution`, `answer`, `type` or `subject`, `level`, `unique_id`). Each becomes an
`Example` with a stable id, the question, the gold final answer and the gold solution.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tokenskip.errors import UsageError
from tokenskip.jsonio import read_jsonl

BENCHMARKS = ("gsm8k", "math")
SPLITS = ("train", "test")
# folder under datasets/ for each benchmark
DATASET_DIRS = {"gsm8k": "gsm8k", "math": "math-500"}
# (hub repo, config) used when the local file is absent
HUB_SOURCES = {
    ("gsm8k", "train"): ("openai/gsm8k", "main"),
    ("gsm8k", "test"): ("openai/gsm8k", "main"),
    ("math", "test"): ("HuggingFaceH4/MATH-500", None),
    ("math", "train"): ("DigitalLearningGmbH/MATH-lighteval", None),
}


@dataclass
class Example:
    id: str
    question: str
    answer: str
    reference: str = ""
    extra: dict = field(default_factory=dict)


# Where a benchmark file is looked for when --data-path is not given, in order (then the hub):
# the project's datasets/, then the folder named by $TOKENSKIP_DATA_DIR (a shared data folder on a
# multi-user machine; the tests and CI set it). No machine's own paths are written here.
DATA_DIR_VARIABLE = "TOKENSKIP_DATA_DIR"


def data_roots() -> tuple[Path, ...]:
    shared = os.environ.get(DATA_DIR_VARIABLE)
    return (Path("datasets"), *([Path(shared).expanduser()] if shared else []))


def default_path(benchmark: str, split: str, root: str | Path = "datasets") -> Path:
    return Path(root) / DATASET_DIRS[benchmark] / f"{split}.jsonl"


def data_source(benchmark: str, split: str, data_path: str | Path | None = None) -> str:
    """The file a run reads (`data_path`, else the first local default that exists), as an absolute
    path so that one file named two ways is one source; else the hub name."""
    if data_path is not None:
        return str(Path(data_path).resolve())
    for root in data_roots():
        if default_path(benchmark, split, root).is_file():
            return str(default_path(benchmark, split, root).resolve())
    return f"hub:{HUB_SOURCES[benchmark, split][0]}"


def content_hash(examples: list[Example]) -> str:
    """A fingerprint of what a run reads (ids, questions, gold answers), whatever file or hub it came
    from: a dataset edited in place changes it, a copy elsewhere does not."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.id, example.question, example.answer], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def gsm8k_final_answer(text: str) -> str:
    """The number after `####`, without thousands separators (`1,000` -> `1000`)."""
    return text.split("####")[-1].strip().replace(",", "")


def gsm8k_solution_as_output(answer_field: str) -> str:
    """A GSM8K reference solution written the way a model answers: no `<<calc>>` notes, and the
    `#### N` line as TokenSkip's final-answer sentence (for gold checks and benchmarks)."""
    from tokenskip.prompts import ANSWER_MARKER

    reasoning = re.sub(r"<<.*?>>", "", answer_field.split("####")[0]).strip()
    return f"{reasoning}{ANSWER_MARKER} $\\boxed{{{gsm8k_final_answer(answer_field)}}}$"


def boxed_answer_of(solution: str) -> str:
    from tokenskip.parsing import extract_boxed

    boxed = extract_boxed(solution)
    return boxed[-1] if boxed else ""


def to_example(record: dict, *, index: int, benchmark: str, split: str, where: str) -> Example:
    """Map one raw record, whatever its layout, onto an Example."""
    default_id = f"{benchmark}-{split}-{index}"
    if "problem" in record:  # MATH / MATH-500
        solution = str(record.get("solution", ""))
        answer = record.get("answer")
        if answer is None:
            answer = boxed_answer_of(solution)
        if not str(answer).strip():
            raise UsageError(f"{where}: MATH record has no 'answer' and no \\boxed{{}} answer in its 'solution'")
        extra = {"level": record.get("level"), "type": record.get("type", record.get("subject"))}
        if "unique_id" in record:
            extra["unique_id"] = record["unique_id"]
        return Example(str(record.get("id", default_id)), str(record["problem"]), str(answer), solution, extra)
    if "question" not in record:
        raise UsageError(f"{where}: record has no 'question' (or 'problem') field; fields are {sorted(record)}")
    if "answer" not in record:
        raise UsageError(f"{where}: record has no 'answer' field; fields are {sorted(record)}")
    raw_answer = str(record["answer"])
    if "cot" in record:  # TokenSkip layout: answer already final
        return Example(str(record.get("id", default_id)), str(record["question"]),
                       raw_answer.strip().replace(",", ""), str(record["cot"]))
    reference = raw_answer.split("####")[0].strip() if "####" in raw_answer else ""
    return Example(str(record.get("id", default_id)), str(record["question"]),
                   gsm8k_final_answer(raw_answer), reference)


def load_examples(benchmark: str, split: str, data_path: str | Path | None = None) -> list[Example]:
    """Load a benchmark split from `data_path`, a local default file (`data_roots()`), or the hub, in that order."""
    if data_path is not None and not Path(data_path).is_file():
        raise UsageError(f"--data-path {data_path} does not exist")
    source = data_source(benchmark, split, data_path)
    if source.startswith("hub:"):
        records, source = _load_from_hub(benchmark, split, default_path(benchmark, split))
    else:
        records = read_jsonl(Path(source), what="dataset file")
    examples = [
        to_example(record, index=i, benchmark=benchmark, split=split, where=f"{source}:{i + 1}")
        for i, record in enumerate(records)
    ]
    if not examples:
        raise UsageError(f"the dataset {source} is empty")
    ids = [example.id for example in examples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"{source}: id {duplicate!r} appears more than once; ids must be unique")
    return examples


def _load_from_hub(benchmark: str, split: str, local_path: Path) -> tuple[list[dict], str]:
    repo, config = HUB_SOURCES[(benchmark, split)]
    try:
        from datasets import load_dataset

        rows = load_dataset(repo, config, split=split)
    except Exception as exc:  # the hub is unreachable, or the dataset is gated/renamed
        raise UsageError(
            f"{local_path} is absent and {repo} could not be loaded from the hub ({type(exc).__name__}); "
            f"run `python download_models.py --datasets` or pass --data-path"
        ) from None
    return [dict(row) for row in rows], f"hub:{repo}"


def subsample(examples: list[Example], max_num: int | None, seed: int) -> list[Example]:
    """The same subset the original script drew (`random.seed(seed); random.sample(data, k)`), in file order."""
    if max_num is not None and max_num <= 0:  # 0 once meant "all", silently
        raise UsageError(f"--max_num_examples must be positive (leave it out for the whole dataset), got {max_num}")
    if max_num is None or max_num >= len(examples):
        return examples
    picked = random.Random(seed).sample(range(len(examples)), max_num)
    return [examples[i] for i in sorted(picked)]

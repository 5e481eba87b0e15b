"""Benchmark questions in the formats users already have on disk.

Record layouts are read as they come: GSM8K as OpenAI ships it (`question`, `answer` ending in
`#### 72`), TokenSkip's own (`question`, `answer`, `cot`, `id`), MATH / MATH-500 (`problem`,
`solution`, `answer`, `type` or `subject`, `level`, `unique_id`), AIME (`problem`, `answer`, an
integer 0-999) and GPQA (`Question`, `Correct Answer`, `Incorrect Answer 1..3`, whose options are
lettered here). Any other JSONL is read with `--question-field` / `--answer-field`. Each becomes an
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

from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_jsonl
from tokenskip.grading.parsing import CHOICE_LETTERS

SPLITS = ("train", "test")


@dataclass(frozen=True)
class HubSplit:
    """Where the hub keeps one of our splits. The hub's split name need not be ours: AIME and GPQA
    ship their questions as the only split, "train", and every one of them is a test question."""

    repo: str
    config: str | None
    split: str


@dataclass(frozen=True)
class Benchmark:
    folder: str  # under datasets/ (and $TOKENSKIP_DATA_DIR): {folder}/{split}.jsonl
    # how its answers are graded (grading.GRADERS_BY_FORMAT): "single", one final answer (GSM8K: TokenSkip
    # grades the last one an output states); "math", every answer an output states against the gold's
    # (TokenSkip's MATH grading); "choice", an option letter
    answer_format: str
    hub: dict[str, HubSplit]  # the splits it has, and where the hub keeps each
    gated: bool = False  # the hub asks users to accept its terms (and HF_TOKEN to prove it)
    about: str = ""


# Hub names and fields as lighteval's task definitions use them (HuggingFaceH4/aime_2024 and
# yentinglin/aime_2025: `problem`, `answer`; Idavidrein/gpqa, config gpqa_diamond, 198 questions).
BENCHMARK_TABLE: dict[str, Benchmark] = {
    "gsm8k": Benchmark("gsm8k", "single", {
        "train": HubSplit("openai/gsm8k", "main", "train"),
        "test": HubSplit("openai/gsm8k", "main", "test"),
    }, about="GSM8K (7,473 train, 1,319 test)"),
    "math": Benchmark("math-500", "math", {
        "test": HubSplit("HuggingFaceH4/MATH-500", None, "test"),
        "train": HubSplit("DigitalLearningGmbH/MATH-lighteval", None, "train"),
    }, about="MATH-500 for test, MATH train (7,500) for train"),
    "aime24": Benchmark("aime-2024", "math", {
        "test": HubSplit("HuggingFaceH4/aime_2024", None, "train"),
    }, about="AIME 2024 (30)"),
    "aime25": Benchmark("aime-2025", "math", {
        "test": HubSplit("yentinglin/aime_2025", None, "train"),
    }, about="AIME 2025 (30)"),
    "gpqa": Benchmark("gpqa-diamond", "choice", {
        "test": HubSplit("Idavidrein/gpqa", "gpqa_diamond", "train"),
    }, gated=True, about="GPQA-Diamond (198, multiple choice)"),
}
BENCHMARKS = tuple(BENCHMARK_TABLE)
# folder under datasets/ for each benchmark
DATASET_DIRS = {name: benchmark.folder for name, benchmark in BENCHMARK_TABLE.items()}
AIME_BENCHMARKS = ("aime24", "aime25")
# the benchmarks with a train split: what stages 2 and 3 work on (their --benchmark)
TRAIN_BENCHMARKS = tuple(name for name, benchmark in BENCHMARK_TABLE.items() if "train" in benchmark.hub)
# what `download_models.py --datasets` fetches when no benchmark is named: TokenSkip's own two
DEFAULT_DOWNLOADS = ("gsm8k", "math")
# GPQA's options are put in a fixed random order, as lighteval does: the three incorrect answers in
# the dataset's order and the correct one inserted at a drawn position. lighteval draws from one
# generator across the whole file; here each question draws from its own, seeded by this number and
# the question's id, so its letters do not depend on which other questions a file holds or in what
# order (a subset or a re-sorted copy is the same questions). Changing it changes every gold letter.
CHOICE_SEED = 1234


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


def answer_format(benchmark: str) -> str:
    """How `benchmark`'s answers are graded: "single", "math" or "choice" (`grading.GRADERS_BY_FORMAT`)."""
    return BENCHMARK_TABLE[benchmark].answer_format


def record_answer_format(record: dict) -> str:
    """The answer format of a prediction record, from its `dataset` tag (`gpqa-test`); "math" for a
    record without one (files written before GPQA was supported hold math answers only)."""
    tag = str(record.get("dataset", ""))
    for split in SPLITS:
        benchmark = tag.removesuffix(f"-{split}")
        if benchmark != tag and benchmark in BENCHMARK_TABLE:
            return answer_format(benchmark)
    return "math"


def hub_split(benchmark: str, split: str) -> HubSplit:
    """Where the hub keeps `benchmark`'s `split`; a one-line UsageError for a split it does not have."""
    splits = BENCHMARK_TABLE[benchmark].hub
    if split not in splits:
        raise UsageError(f"{benchmark} has no {split} split on the hub (only {', '.join(splits)}): use --data-type "
                         f"{next(iter(splits))}, or pass your own {split} file with --data-path")
    return splits[split]


def data_source(benchmark: str, split: str, data_path: str | Path | None = None) -> str:
    """The file a run reads (`data_path`, else the first local default that exists), as an absolute
    path so that one file named two ways is one source; else the hub name."""
    if data_path is not None:
        return str(Path(data_path).resolve())
    for root in data_roots():
        if default_path(benchmark, split, root).is_file():
            return str(default_path(benchmark, split, root).resolve())
    return f"hub:{hub_split(benchmark, split).repo}"


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
    from tokenskip.prompting.prompts import ANSWER_MARKER

    reasoning = re.sub(r"<<.*?>>", "", answer_field.split("####")[0]).strip()
    return f"{reasoning}{ANSWER_MARKER} $\\boxed{{{gsm8k_final_answer(answer_field)}}}$"


def boxed_answer_of(solution: str) -> str:
    from tokenskip.grading.parsing import extract_boxed

    boxed = extract_boxed(solution)
    return boxed[-1] if boxed else ""


def to_example(record: dict, *, index: int, benchmark: str, split: str, where: str) -> Example:
    """Map one raw record, whatever its layout, onto an Example."""
    default_id = f"{benchmark}-{split}-{index}"
    if benchmark in AIME_BENCHMARKS:
        return aime_example(record, default_id, where)
    if benchmark == "gpqa":
        return gpqa_example(record, default_id, where)
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


def _fields(record: dict) -> dict:
    """The record keyed as users spell its fields in their own files: `Correct Answer`,
    `correct_answer` and `correct-answer` are one field (`correct_answer`)."""
    return {re.sub(r"[\s\-]+", "_", str(key).strip()).lower(): value for key, value in record.items()}


def _first(fields: dict, *names: str):
    return next((fields[name] for name in names if fields.get(name) is not None), None)


def _record_id(fields: dict, default_id: str) -> str:
    found = _first(fields, "id", "record_id", "unique_id")
    return str(found) if found is not None and str(found).strip() else default_id


def aime_answer(answer, where: str) -> str:
    """An AIME answer as the integer it must be (0-999; `033` -> `33`)."""
    text = str(answer).strip().strip("$")
    if not re.fullmatch(r"\d{1,3}", text):
        raise UsageError(f"{where}: AIME answer {str(answer)[:40]!r} is not an integer from 0 to 999; "
                         "is this an AIME file? (use --benchmark math for other problems)")
    return str(int(text))


def aime_example(record: dict, default_id: str, where: str) -> Example:
    """AIME as the hub ships it (`problem`, `answer`, `solution`, `id`, `year`) or as users keep it
    (`question`, `Problem`, `Answer`...); without an answer, the last \\boxed{} of the solution."""
    fields = _fields(record)
    question = _first(fields, "problem", "question")
    if question is None:
        raise UsageError(f"{where}: AIME record has no 'problem' (or 'question') field; fields are {sorted(record)}")
    solution = str(_first(fields, "solution") or "")
    answer = _first(fields, "answer")
    if answer is None:
        answer = boxed_answer_of(solution)
        if not answer:
            raise UsageError(f"{where}: AIME record has no 'answer' and no \\boxed{{}} answer in a 'solution'; "
                             f"fields are {sorted(record)}")
    extra = {"year": fields.get("year")}
    return Example(_record_id(fields, default_id), str(question), aime_answer(answer, where), solution, extra)


def gpqa_example(record: dict, default_id: str, where: str) -> Example:
    """GPQA as the hub ships it (`Question`, `Correct Answer`, `Incorrect Answer 1..3`, `Record ID`),
    or in lower case (`question`, `correct_answer`...): the question followed by its four options
    lettered A-D (lighteval's layout), and the correct option's letter as the gold answer. A file
    already in that form (`question` with its options, `answer` a letter) is read as it is."""
    fields = _fields(record)
    question = _first(fields, "question", "problem")
    correct = _first(fields, "correct_answer")
    incorrect = [_first(fields, f"incorrect_answer_{i}") for i in (1, 2, 3)]
    example_id = _record_id(fields, default_id)
    if question is not None and correct is None and not any(incorrect):
        letter = str(_first(fields, "answer") or "").strip().strip("()").upper()
        if len(letter) == 1 and letter in CHOICE_LETTERS:
            return Example(example_id, str(question), letter, str(_first(fields, "explanation") or ""))
    if question is None or correct is None or None in incorrect:
        raise UsageError(f"{where}: GPQA record needs 'Question', 'Correct Answer' and 'Incorrect Answer 1'-'3' "
                         f"(or 'question' with its options and a letter as 'answer'); fields are {sorted(record)}")
    options = [str(option).strip() for option in incorrect]
    gold = choice_position(example_id if example_id != default_id else str(question))
    options.insert(gold, str(correct).strip())
    lettered = "\n".join(f"{letter}) {option}" for letter, option in zip(CHOICE_LETTERS, options))
    extra = {"domain": fields.get("high_level_domain"), "subdomain": fields.get("subdomain")}
    return Example(example_id, f"{str(question).strip()}\n\n{lettered}", CHOICE_LETTERS[gold],
                   str(_first(fields, "explanation") or ""), extra)


def choice_position(key: str, n_options: int = len(CHOICE_LETTERS)) -> int:
    """Where the correct option goes for the question `key` (its id, else its text): a fixed draw
    from a generator seeded with CHOICE_SEED and the key, the same on every machine and every call."""
    seed = int.from_bytes(hashlib.sha256(f"{CHOICE_SEED}:{key}".encode()).digest()[:8], "big")
    return random.Random(seed).randrange(n_options)


def example_from_fields(record: dict, *, question_field: str, answer_field: str, benchmark: str,
                        default_id: str, where: str) -> Example:
    """Any JSONL, read with the fields the user named (--question-field, --answer-field). A math
    answer that is a whole solution gives its final answer (after `####`, else the last \\boxed{})
    and is kept as the reference; a multiple-choice answer must be the option letter."""
    for flag, name in (("--question-field", question_field), ("--answer-field", answer_field)):
        if name not in record:
            raise UsageError(f"{where}: record has no field {name!r} ({flag}); its fields are {sorted(record)}")
    raw = str(record[answer_field]).strip() if record[answer_field] is not None else ""
    if not raw:
        raise UsageError(f"{where}: the answer field {answer_field!r} is empty")
    reference = ""
    if answer_format(benchmark) == "choice":
        answer = raw.strip("()").upper()
        if len(answer) != 1 or answer not in CHOICE_LETTERS:
            raise UsageError(f"{where}: {benchmark} answers are option letters ({', '.join(CHOICE_LETTERS)}), but "
                             f"{answer_field!r} holds {raw[:40]!r}; name the field holding the letter")
    elif "####" in raw:
        answer, reference = gsm8k_final_answer(raw), raw.split("####")[0].strip()
    elif boxed_answer_of(raw):
        answer, reference = boxed_answer_of(raw), raw
    else:
        answer = raw
    if benchmark in AIME_BENCHMARKS:
        answer = aime_answer(answer, where)
    return Example(_record_id(_fields(record), default_id), str(record[question_field]), answer, reference)


def load_examples(benchmark: str, split: str, data_path: str | Path | None = None, *,
                  question_field: str | None = None, answer_field: str | None = None) -> list[Example]:
    """Load a benchmark split from `data_path`, a local default file (`data_roots()`), or the hub, in that order.

    `question_field` / `answer_field` read every record through those fields instead of the
    benchmark's own layout (either alone: the other is `question` / `answer`)."""
    if data_path is not None and not Path(data_path).is_file():
        raise UsageError(f"--data-path {data_path} does not exist")
    source = data_source(benchmark, split, data_path)
    if source.startswith("hub:"):
        records, source = _load_from_hub(benchmark, split, default_path(benchmark, split))
    else:
        records = read_jsonl(Path(source), what="dataset file")
    if question_field or answer_field:
        examples = [
            example_from_fields(record, question_field=question_field or "question",
                                answer_field=answer_field or "answer", benchmark=benchmark,
                                default_id=f"{benchmark}-{split}-{i}", where=f"{source}:{i + 1}")
            for i, record in enumerate(records)
        ]
    else:
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
    source = hub_split(benchmark, split)
    try:
        from datasets import load_dataset

        rows = load_dataset(source.repo, source.config, split=source.split)
    except Exception as exc:  # the hub is unreachable, or the dataset is gated/renamed
        gated = (f" (gated: accept its terms at https://huggingface.co/datasets/{source.repo} and set HF_TOKEN)"
                 if BENCHMARK_TABLE[benchmark].gated else "")
        fetch = "--datasets" if benchmark in DEFAULT_DOWNLOADS else f"--datasets {benchmark}"
        raise UsageError(
            f"{local_path} is absent and {source.repo} could not be loaded from the hub ({type(exc).__name__})"
            f"{gated}; run `python download_models.py {fetch}` or pass --data-path"
        ) from None
    return [dict(row) for row in rows], f"hub:{source.repo}"


def subsample(examples: list[Example], max_num: int | None, seed: int) -> list[Example]:
    """The same subset the original script drew (`random.seed(seed); random.sample(data, k)`), in file order."""
    if max_num is not None and max_num <= 0:  # 0 once meant "all", silently
        raise UsageError(f"--max_num_examples must be positive (leave it out for the whole dataset), got {max_num}")
    if max_num is None or max_num >= len(examples):
        return examples
    picked = random.Random(seed).sample(range(len(examples)), max_num)
    return [examples[i] for i in sorted(picked)]

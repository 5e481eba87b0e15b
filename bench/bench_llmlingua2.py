"""How much faster batched LLMLingua-2 scoring is than TokenSkip's per-call llmlingua loop.

Both sides compress the first N GSM8K train solutions (TokenSkip's CoT form) at every ratio with
the same random-weight XLM-RoBERTa-base token classifier on CPU: llmlingua as the original
script runs it (for each ratio, for each CoT, `compress_prompt`), and `LLMLingua2Scorer` (one
classification per CoT, every ratio from it). The outputs must be identical. Each side runs in
its own process so that its peak resident memory is its own. Goal: at least 5x faster.

    .venv/bin/python bench/bench_llmlingua2.py --n 50 [--options llama3] [--out RESULTS.md]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from testkit.classifiers import build_classifier
from tokenskip.compression.scorers.llmlingua2 import (
    OPTIONS_BY_MODEL_TYPE,
    CompressOptions,
    LLMLingua2Scorer,
    use_offline_tiktoken,
)
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_jsonl
from tokenskip.core.ratios import DEFAULT_RATIOS
from tokenskip.data.benchmarks import gsm8k_solution_as_output

GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
RATES = DEFAULT_RATIOS
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def run_batched(
    model: str, cots: list[str], options: CompressOptions, max_batch_tokens: int | None, fixed: bool
) -> dict:
    started = time.perf_counter()
    scorer = LLMLingua2Scorer(
        model, options=options, max_batch_tokens=max_batch_tokens, fixed_padding=fixed, progress=False
    )
    loaded = time.perf_counter()
    outputs = scorer.compress_texts(cots, RATES)
    return finish([[texts[rate] for texts in outputs] for rate in RATES], started, loaded)


def run_llmlingua(model: str, cots: list[str], options: CompressOptions) -> dict:
    use_offline_tiktoken()
    from llmlingua import PromptCompressor

    started = time.perf_counter()
    compressor = PromptCompressor(model_name=model, use_llmlingua2=True, device_map="cpu")
    loaded = time.perf_counter()
    kwargs = {}
    if options.force_tokens or options.force_reserve_digit or options.drop_consecutive:
        kwargs = {
            "force_tokens": list(options.force_tokens),
            "force_reserve_digit": options.force_reserve_digit,
            "drop_consecutive": options.drop_consecutive,
        }
    outputs = [
        [compressor.compress_prompt(cot, rate=rate, **kwargs)["compressed_prompt"] for cot in cots]
        for rate in RATES
    ]
    return finish(outputs, started, loaded)


def finish(outputs: list[list[str]], started: float, loaded: float) -> dict:
    return {
        "outputs": outputs,
        "load_s": loaded - started,
        "compress_s": time.perf_counter() - loaded,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
    }


def in_fresh_process(function, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="how many GSM8K CoTs (the full run is 500)")
    parser.add_argument("--options", choices=sorted(OPTIONS_BY_MODEL_TYPE), default="qwen")
    parser.add_argument(
        "--max-batch-tokens", type=int, help="padded tokens per forward pass (scorer's default)"
    )
    parser.add_argument(
        "--fixed-padding", action="store_true", help="pad every chunk to 512 as llmlingua does"
    )
    parser.add_argument("--skip-llmlingua", action="store_true", help="time only the batched scorer")
    parser.add_argument("--data", type=Path, default=GSM8K_TRAIN)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    records = read_jsonl(args.data, what="GSM8K train file")
    if not 0 < args.n <= len(records):
        raise UsageError(f"--n must be between 1 and {len(records)}, got {args.n}")
    cots = [gsm8k_solution_as_output(r["answer"]) for r in records[: args.n]]

    with tempfile.TemporaryDirectory() as tmp:
        # llmlingua only accepts folders named after its two model families
        model = tmp + "/random-llmlingua-2-xlm-roberta-large-meetingbank"
        started = time.perf_counter()
        training = [gsm8k_solution_as_output(r["answer"]) for r in records]
        build_classifier(Path(model), "xlm-roberta", training, vocab_size=8000, **BASE)
        print(
            f"built a random XLM-R-base token classifier in {time.perf_counter() - started:.0f} s", flush=True
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        cot_tokens = sum(len(tokenizer.tokenize(cot)) for cot in cots)
        options = OPTIONS_BY_MODEL_TYPE[args.options]
        batched = in_fresh_process(
            run_batched, model, cots, options, args.max_batch_tokens, args.fixed_padding
        )
        print(f"batched scorer: {batched['compress_s']:.1f} s", flush=True)
        reference = None if args.skip_llmlingua else in_fresh_process(run_llmlingua, model, cots, options)

    report = render(args, argv, len(tokenizer), cot_tokens, batched, reference)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    if reference is not None and batched["outputs"] != reference["outputs"]:
        raise SystemExit("the batched scorer's outputs differ from llmlingua's (see the report)")


def render(args, argv, vocab: int, cot_tokens: int, batched: dict, reference: dict | None) -> str:
    """The markdown report: setup, one row per side, speed-up and the output comparison."""
    flags = shlex.join(argv if argv is not None else sys.argv[1:])
    title = "batched scorer" if reference is None else "batched scorer vs llmlingua's per-call loop"
    lines = [
        f"# LLMLingua-2: {title} ({args.n} GSM8K CoTs, {len(RATES)} ratios)",
        "",
        f"command: `.venv/bin/python bench/{Path(__file__).name} {flags}`",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        + f"{torch.get_num_threads()} threads, load average at the end {os.getloadavg()[0]:.1f}",
        f"model: random XLM-RoBERTa-base token classifier (12 layers, hidden 768), vocab {vocab}; "
        + f"options {args.options}; ratios {', '.join(map(str, RATES))}",
        f"CoT tokens (classifier tokenizer): {cot_tokens} in all, {cot_tokens / args.n:.0f} per CoT",
        "",
        "| side | load s | compress s (all ratios) | CoT tokens/s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    sides = {"batched scorer" + (" (fixed padding)" if args.fixed_padding else ""): batched}
    if reference is not None:
        sides["llmlingua loop"] = reference
    for name, side in sides.items():
        speed = cot_tokens / side["compress_s"]
        lines.append(
            f"| {name} | {side['load_s']:.1f} | {side['compress_s']:.1f} | {speed:.0f} | {side['peak_rss_mib']:.0f} |"
        )
    if reference is not None:
        pairs = [
            (a, b)
            for ours, theirs in zip(batched["outputs"], reference["outputs"])
            for a, b in zip(ours, theirs)
        ]
        same = sum(a == b for a, b in pairs)
        first = next((f"\n\nfirst difference:\n    {a!r}\n    {b!r}" for a, b in pairs if a != b), "")
        speedup = reference["compress_s"] / batched["compress_s"]
        lines += ["", f"speed-up: {speedup:.1f}x; identical outputs: {same}/{len(pairs)}{first}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except UsageError as exc:
        sys.exit(f"error: {exc}")

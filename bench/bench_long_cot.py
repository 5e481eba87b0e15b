"""Long CoTs: each scorer compresses ~4,000-token CoTs; CoT tokens/s, peak memory and the kept ratio.

A long CoT here is consecutive GSM8K train reference solutions (TokenSkip's CoT form) joined by
blank lines until the next would pass `--tokens` tokens of the embedded SmolLM2-135M-Instruct's
tokenizer; the last problem's question and answer are what CTS conditions on. Every scorer runs
in its own fresh process (spawned), which loads its model and scores one short CoT (so that the
weights are paged in), then scores the long CoTs and selects γ = 0.5. Reported per scorer: load
time, compression time and CoT tokens/s (SmolLM2 tokens, the same unit for every scorer), RSS
after loading, peak RSS of the whole process and the peak during compression alone (the kernel's
high-water mark is reset after loading, where Linux allows it), the number and largest forward
pass (rows × columns of token ids) and the widest sequence, and the kept share at γ = 0.5 in
SmolLM2 tokens.

Scorers: `llmlingua2` and `ner` use the LLMLingua-2 classifier at `--llmlingua-path` (default:
LLMLINGUA_PATH from models/paths.env), else a random-weight XLM-RoBERTa token classifier of
`--classifier-size` built at run time with a tokenizer trained on GSM8K (speed and memory depend
on the architecture's size, not its weights; its kept words are arbitrary); `cts*` use the
embedded SmolLM2-135M-Instruct as the reference model (8,192-token context). A CTS window is at
most half of the token budget of a forward pass (--max-batch-tokens; a window's two passes run
together), so the budget bounds memory: `cts` has the default 8,192 (windows of 4,096 tokens, so a
4,000-token CoT still fits in one), `cts-b4096` and `cts-b2048` budgets of 4,096 and 2,048
(windows of 2,048 and 1,024 tokens; stride: half the room after the prefix). Also available in
--scorers: `cts-w1024`, 1,024-token windows within the default budget (four windows per pass: the
same memory as `cts`), and `cts-onepass`, a 16,384-token budget: windows of the whole 8,192-token
context, what CTS did before windows were bounded by the budget (it differs from `cts` only for
CoTs over ~4,000 tokens).

    .venv/bin/python bench/bench_long_cot.py [--n-cots 1] [--tokens 4000] [--scorers ...] [--json OUT.json]

Without the GSM8K train file ($TOKENSKIP_DATA_DIR/gsm8k/train.jsonl or datasets/gsm8k/train.jsonl)
it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
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

from tokenskip.core.errors import UsageError
from tokenskip.data.benchmarks import gsm8k_final_answer, gsm8k_solution_as_output
from tokenskip.models import embedded
from tokenskip.prompting.prompts import ANSWER_MARKER

RATIO = 0.5
SIZES = {  # random classifiers: XLM-RoBERTa base and large, and the tests' tiny one
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
# scorer name -> (method, keyword arguments of its class)
SCORERS = {
    "llmlingua2": ("llmlingua2", {}),
    "ner": ("ner", {}),
    "cts": ("cts", {}),
    "cts-b4096": ("cts", {"max_batch_tokens": 4096}),
    "cts-b2048": ("cts", {"max_batch_tokens": 2048}),
    "cts-w1024": ("cts", {"window": 1024}),
    "cts-onepass": ("cts", {"max_batch_tokens": 16384}),
}
DEFAULT_SCORERS = ("llmlingua2", "ner", "cts", "cts-b4096", "cts-b2048")


def gsm8k_train() -> Path | None:
    roots = [ROOT / "datasets"]
    if os.environ.get("TOKENSKIP_DATA_DIR"):
        roots.append(Path(os.environ["TOKENSKIP_DATA_DIR"]).expanduser())
    roots.append(ROOT.parent / "shared" / "data")  # the CI layout beside the checkout
    files = [root / "gsm8k" / "train.jsonl" for root in roots]
    return next((file for file in files if file.is_file()), None)


def long_cots(records: list[dict], n_cots: int, tokens: int, count) -> list[dict]:
    """`n_cots` CoTs of consecutive solutions, each as long as fits in `tokens` SmolLM2 tokens."""
    cots, index = [], 0
    for _ in range(n_cots):
        parts: list[str] = []
        last = None
        while index < len(records):
            record = records[index]
            reasoning = gsm8k_solution_as_output(record["answer"]).split(ANSWER_MARKER)[0]
            boxed = f" $\\boxed{{{gsm8k_final_answer(record['answer'])}}}$"
            candidate = "\n\n".join([*parts, reasoning]) + ANSWER_MARKER + boxed
            if parts and count(candidate) > tokens:
                break
            parts.append(reasoning)
            last = record
            index += 1
        if last is None:
            raise UsageError(f"the GSM8K file has too few problems for {n_cots} CoTs of {tokens} tokens")
        answer = gsm8k_final_answer(last["answer"])
        text = "\n\n".join(parts) + ANSWER_MARKER + f" $\\boxed{{{answer}}}$"
        cots.append({"text": text, "question": last["question"], "answer": answer, "n_solutions": len(parts)})
    return cots


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM), so the next peak is the compression's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_scorer(name: str, cots: list[dict], classifier: str, reference: str) -> dict:
    """In a fresh process: load the scorer, then score every CoT and select γ = 0.5, measured."""
    import torch

    from tokenskip.compression.scorers import CoT, scorer_class

    method, kwargs = SCORERS[name]
    started = time.perf_counter()
    model_path = reference if method == "cts" else classifier
    scorer = scorer_class(method)(model_path, device="cpu", progress=False, **kwargs)
    # a short CoT first: it pages the weights in (and loads spaCy), so that the peak while compressing
    # minus the RSS after loading is what the long CoTs themselves cost
    scorer.score([CoT("Step 1: 2 + 2 = 4.", "What is 2 + 2?", "4")])
    loaded = time.perf_counter()
    shapes: list[tuple[int, int]] = []

    def record(module, args, call_kwargs):
        ids = call_kwargs.get("input_ids", args[0] if args else None)
        shapes.append(tuple(ids.shape))

    scorer.model.register_forward_pre_hook(record, with_kwargs=True)
    rss_loaded = _status_kib("VmRSS")
    reset = _reset_peak()
    begin = time.perf_counter()
    with torch.inference_mode():
        scored = scorer.score([CoT(c["text"], c["question"], c["answer"]) for c in cots])
        texts = [scorer.select(s, RATIO) for s in scored]
    finished = time.perf_counter()
    hwm = _status_kib("VmHWM")
    return {
        "scorer": name,
        "method": method,
        "settings": {key: getattr(scorer, key) for key in ("window", "stride", "max_batch_tokens")
                     if hasattr(scorer, key)},
        "load_s": loaded - started,
        "compress_s": finished - begin,
        "rss_after_load_mib": rss_loaded / 1024 if rss_loaded else None,
        "compress_peak_rss_mib": hwm / 1024 if reset and hwm else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "n_passes": len(shapes),
        "largest_pass_tokens": max((rows * cols for rows, cols in shapes), default=0),
        "widest_sequence": max((cols for _, cols in shapes), default=0),
        "compressed": texts,
        "torch_threads": torch.get_num_threads(),
    }


def in_fresh_process(function, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def classifier_path(args, records: list[dict], tmp: str) -> tuple[str, str]:
    """The LLMLingua-2 classifier to use and how to describe it."""
    path = args.llmlingua_path
    if path is None:
        env = ROOT / "models" / "paths.env"
        if env.is_file():
            match = re.search(r"^LLMLINGUA_PATH=(.+)$", env.read_text(), re.MULTILINE)
            path = Path(match.group(1).strip()) if match else None
    if path is not None and Path(path).is_dir():
        return str(path), f"LLMLingua-2 classifier {path}"
    if args.llmlingua_path is not None:
        raise UsageError(f"--llmlingua-path {args.llmlingua_path} is not a folder")
    from testkit.classifiers import build_classifier

    folder = Path(tmp) / "random-llmlingua-2-xlm-roberta-large-meetingbank"
    texts = [gsm8k_solution_as_output(r["answer"]) for r in records]
    sizes = SIZES[args.classifier_size]
    build_classifier(folder, "xlm-roberta", texts, vocab_size=8000, **sizes)
    return str(folder), (f"no LLMLingua-2 model offline: a random-weight XLM-RoBERTa token classifier of "
                         f"{args.classifier_size} size ({sizes['num_hidden_layers']} layers, hidden "
                         f"{sizes['hidden_size']}), Unigram tokenizer of 8,000 pieces trained on GSM8K")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cots", type=int, default=1, help="how many long CoTs (default 1)")
    parser.add_argument("--tokens", type=int, default=4000, help="SmolLM2 tokens per CoT, at most (default 4000)")
    parser.add_argument("--scorers", nargs="+", choices=sorted(SCORERS), default=list(DEFAULT_SCORERS))
    parser.add_argument("--llmlingua-path", type=Path, default=None,
                        help="a real LLMLingua-2 classifier folder (default: LLMLINGUA_PATH of models/paths.env)")
    parser.add_argument("--classifier-size", choices=sorted(SIZES), default="base",
                        help="size of the random classifier used when no real one is available (default base)")
    parser.add_argument("--reference-model", type=Path, default=None,
                        help="CTS reference model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--data", type=Path, default=None, help="GSM8K train file (default: found as stage 1 finds it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results (JSON) here")
    args = parser.parse_args(argv)
    if args.n_cots < 1 or args.tokens < 100:
        raise UsageError("--n-cots must be positive and --tokens at least 100")
    data = args.data or gsm8k_train()
    if data is None or not data.is_file():
        print(f"skipped: no GSM8K train file ({args.data or 'datasets/gsm8k/train.jsonl or $TOKENSKIP_DATA_DIR'})")
        return 0
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    reference = args.reference_model or embedded.default_dir(ROOT / "models")
    if not embedded.is_materialized(Path(reference)):
        reference = embedded.materialize(ROOT / "models") if args.reference_model is None else reference
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference)
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    cots = long_cots(records, args.n_cots, args.tokens, count)
    cot_tokens = [count(c["text"]) for c in cots]
    print(f"{len(cots)} CoTs of {', '.join(map(str, cot_tokens))} SmolLM2 tokens "
          f"({', '.join(str(c['n_solutions']) for c in cots)} solutions each)", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        classifier, classifier_note = ("", "")
        if any(SCORERS[name][0] != "cts" for name in args.scorers):
            started = time.perf_counter()
            classifier, classifier_note = classifier_path(args, records, tmp)
            print(f"{classifier_note} ({time.perf_counter() - started:.0f} s to prepare)", flush=True)
        for name in args.scorers:
            row = in_fresh_process(run_scorer, name, cots, classifier, str(reference))
            kept = [count(text) / n for text, n in zip(row.pop("compressed"), cot_tokens)]
            row["kept_ratio"] = sum(kept) / len(kept)
            row["tokens_per_s"] = sum(cot_tokens) / row["compress_s"]
            rows.append(row)
            print(f"{name}: {row['compress_s']:.1f} s, {row['tokens_per_s']:.0f} tokens/s, "
                  f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)

    flags = shlex.join(argv if argv is not None else sys.argv[1:])
    threads = rows[0]["torch_threads"] if rows else "?"
    result = {
        "command": f".venv/bin/python bench/bench_long_cot.py {flags}".rstrip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {threads}",
        "load_average_at_end": os.getloadavg()[0],
        "cot_tokens": cot_tokens,
        "ratio": RATIO,
        "classifier": classifier_note,
        "reference_model": str(reference),
        "rows": rows,
    }
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


def render(result: dict) -> str:
    n = len(result["cot_tokens"])
    lines = [
        f"CoTs: {n} of {sum(result['cot_tokens']) / n:.0f} SmolLM2 tokens on average; γ = {result['ratio']}; "
        f"{result['machine']}; load average at the end {result['load_average_at_end']:.1f}",
        f"classifier (llmlingua2, ner): {result['classifier'] or '-'}",
        f"reference model (cts): {result['reference_model']}",
        "",
        "| scorer | settings | load s | compress s | CoT tokens/s | RSS after load MiB | peak RSS MiB "
        "| peak while compressing MiB | passes | largest pass (tokens) | widest sequence | kept at γ=0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        settings = ", ".join(f"{k} {v}" for k, v in row["settings"].items() if v is not None) or "-"
        after = f"{row['rss_after_load_mib']:.0f}" if row["rss_after_load_mib"] else "-"
        during = f"{row['compress_peak_rss_mib']:.0f}" if row["compress_peak_rss_mib"] else "-"
        lines.append(
            f"| {row['scorer']} | {settings} | {row['load_s']:.1f} | {row['compress_s']:.1f} "
            f"| {row['tokens_per_s']:.0f} "
            f"| {after} | {row['peak_rss_mib']:.0f} | {during} | {row['n_passes']} | {row['largest_pass_tokens']} "
            f"| {row['widest_sequence']} | {row['kept_ratio']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as exc:
        sys.exit(f"error: {exc}")

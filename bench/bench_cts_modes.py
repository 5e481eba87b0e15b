"""CTS's two selections side by side: ratio adherence and throughput, against the authors' per-call loop.

Three ways to compress the same CoTs at every ratio γ, with the same causal reference model:

- answer:          `CTS_data_get.py` (default `--selection answer`): s_i from question + answer vs
                   question, top γ of the CoT's units, many CoTs per forward pass, one pass for all γ.
- authors:         `CTS_data_get.py --selection authors` (`AuthorsCTSScorer`): the authors' llmlingua
                   call, exactly, its forward passes shared by all γ.
- authors-loop:    the authors' script: `PromptCompressor`, then `compress_prompt` once per CoT per γ.
                   Its outputs must equal `authors`' (the script fails otherwise).

CoTs: GSM8K train reference solutions (`<<calc>>` notes and the `#### N` line removed), and long
CoTs made of `--long-solutions` consecutive solutions joined by newlines, conditioned on the first
one's question (12 solutions make ~650 words, ~1,160 SmolLM2 tokens). `--n-very-long` adds CoTs of
30 solutions (~2,900 tokens), past one 1,800-token window (slow: minutes each on 2 CPU cores).
The actual ratio is kept / original, in tokens of the reference model's tokenizer (the target's
here: SmolLM2 is both) and in whitespace-separated words, averaged over CoTs.

    .venv/bin/python bench/bench_cts_modes.py [--n-short 16] [--n-long 3] [--json OUT.json]

Reads $TOKENSKIP_DATA_DIR/gsm8k/train.jsonl (or datasets/gsm8k/train.jsonl); without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.compression import driver
from tokenskip.compression.scorers import CoT  # noqa: E402
from tokenskip.core.jsonio import read_jsonl  # noqa: E402
from tokenskip.core.ratios import DEFAULT_RATIOS  # noqa: E402
from tokenskip.data import benchmarks as data  # noqa: E402

RATES = DEFAULT_RATIOS
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"


def gsm8k_train() -> Path | None:
    for root in data.data_roots():
        path = root / "gsm8k" / "train.jsonl"
        if not path.is_absolute():
            path = ROOT / path
        if path.is_file():
            return path
    return None


def reasoning(record: dict) -> str:
    """The CoT stage 2 would compress from a model that wrote the reference solution."""
    return driver.without_final_answer_sentence(data.gsm8k_solution_as_output(record["answer"]))


def make_sets(records: list[dict], n_short: int, n_long: int, n_very_long: int,
              per_long: int) -> dict[str, list[CoT]]:
    sets = {}
    if n_short:
        sets["short"] = [CoT(reasoning(r), r["question"], data.gsm8k_final_answer(r["answer"]))
                         for r in records[:n_short]]

    def joined(count: int, size: int, offset: int) -> list[CoT]:
        cots = []
        for i in range(count):
            group = records[offset + i * size: offset + (i + 1) * size]
            cots.append(CoT("\n".join(reasoning(r) for r in group), group[0]["question"],
                            data.gsm8k_final_answer(group[-1]["answer"])))
        return cots

    if n_long:
        sets[f"long ({per_long} solutions)"] = joined(n_long, per_long, 0)
    if n_very_long:
        sets["very long (30 solutions)"] = joined(n_very_long, 30, n_long * per_long)
    return sets


def run_mode(mode: str, model: str, cots: list[CoT]) -> tuple[list[dict[float, str]], float, float]:
    """The texts per CoT and γ, the load time and the time to compress every CoT at every γ."""
    started = time.perf_counter()
    if mode == "answer":
        from tokenskip.compression.scorers.cts import CTSScorer

        scorer = CTSScorer(model, device="cpu", progress=False)
    elif mode == "authors":
        from tokenskip.compression.scorers.cts_authors import AuthorsCTSScorer

        scorer = AuthorsCTSScorer(model, device="cpu", progress=False)
    else:
        from tokenskip.compression.scorers.llmlingua2 import use_offline_tiktoken

        use_offline_tiktoken()
        from llmlingua import PromptCompressor

        compressor = PromptCompressor(model_name=model, device_map="cpu")
    loaded = time.perf_counter()
    if mode == "authors-loop":
        from tokenskip.compression.scorers.cts_authors import authors_call

        texts = [{rate: compressor.compress_prompt(**authors_call(cot.text, cot.question, rate))["compressed_prompt"]
                  for rate in RATES} for cot in cots]
    else:
        texts = scorer.compress(cots, RATES)
    return texts, loaded - started, time.perf_counter() - loaded


def adherence(cots: list[CoT], texts: list[dict[float, str]], count, decoded) -> dict[str, dict]:
    """Mean kept ratios per γ, and how many CoTs came back unpruned: as they were, or as their
    tokens decode (llmlingua's output of an unpruned text, which the tokenizer's clean-up of spaces
    may change)."""
    rows = {}
    for rate in RATES:
        token_ratios = [count(t[rate]) / count(c.text) for c, t in zip(cots, texts)]
        word_ratios = [len(t[rate].split()) / len(c.text.split()) for c, t in zip(cots, texts)]
        rows[str(rate)] = {"token_ratio": sum(token_ratios) / len(cots), "word_ratio": sum(word_ratios) / len(cots),
                           "unpruned": sum(t[rate] in (c.text, decoded(c.text)) for c, t in zip(cots, texts))}
    return rows


def render(report: dict) -> str:
    lines = [f"reference model: {report['model']}; {report['machine']}", ""]
    for name, entry in report["sets"].items():
        lines.append(f"### {name}: {entry['n']} CoTs, mean {entry['mean_tokens']:.0f} tokens / "
                     f"{entry['mean_words']:.0f} words")
        lines.append("")
        lines.append("| mode | " + " | ".join(f"γ={rate}" for rate in RATES) + " | unpruned (of n) at γ=0.5 | "
                     "load | compress, all γ | CoTs/s |")
        lines.append("|---|" + "---|" * (len(RATES) + 4))
        for mode, result in entry["modes"].items():
            cells = [f"{result['ratios'][str(r)]['token_ratio']:.2f} ({result['ratios'][str(r)]['word_ratio']:.2f})"
                     for r in RATES]
            lines.append(f"| {mode} | " + " | ".join(cells) + f" | {result['ratios']['0.5']['unpruned']} | "
                         f"{result['load_s']:.1f} s | {result['compress_s']:.1f} s | {result['cots_per_s']:.2f} |")
        if "identical" in entry:
            lines.append("")
            lines.append(f"authors vs authors-loop: {entry['identical']} outputs identical; "
                         f"speed-up {entry['speedup']:.2f}x")
        lines.append("")
    lines.append("cells: actual ratio in reference-model tokens (in words)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-model", default=str(DEFAULT_MODEL))
    parser.add_argument("--n-short", type=int, default=16, help="GSM8K reference solutions")
    parser.add_argument("--n-long", type=int, default=3, help="CoTs of --long-solutions solutions each")
    parser.add_argument("--long-solutions", type=int, default=12)
    parser.add_argument("--n-very-long", type=int, default=0, help="CoTs of 30 solutions each (slow)")
    parser.add_argument("--modes", nargs="+", default=["answer", "authors", "authors-loop"],
                        choices=["answer", "authors", "authors-loop"])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 is faster on a machine other jobs keep busy)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    path = gsm8k_train()
    if path is None:
        print("GSM8K train not found ($TOKENSKIP_DATA_DIR/gsm8k/train.jsonl or datasets/gsm8k/train.jsonl); skipped")
        return 0
    if not Path(args.reference_model).is_dir():
        print(f"{args.reference_model} not found (python download_models.py --embedded); skipped")
        return 0
    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)

    records = read_jsonl(path, what="GSM8K train file")
    sets = make_sets(records, args.n_short, args.n_long, args.n_very_long, args.long_solutions)
    tokenizer = AutoTokenizer.from_pretrained(args.reference_model)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def decoded(text: str) -> str:
        return tokenizer.batch_decode([tokenizer(text, add_special_tokens=False).input_ids])[0]

    report = {"model": args.reference_model, "argv": list(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"torch {torch.__version__}, {torch.get_num_threads()} threads",
              "sets": {}}
    for name, cots in sets.items():
        entry = {"n": len(cots), "mean_tokens": sum(map(count, (c.text for c in cots))) / len(cots),
                 "mean_words": sum(len(c.text.split()) for c in cots) / len(cots), "modes": {}}
        outputs = {}
        for mode in args.modes:
            texts, load_s, compress_s = run_mode(mode, args.reference_model, cots)
            outputs[mode] = texts
            entry["modes"][mode] = {"load_s": load_s, "compress_s": compress_s, "cots_per_s": len(cots) / compress_s,
                                    "ratios": adherence(cots, texts, count, decoded)}
            print(f"{name}: {mode} {compress_s:.1f} s", flush=True)
        if "authors" in outputs and "authors-loop" in outputs:
            same = sum(a == b for ours, loop in zip(outputs["authors"], outputs["authors-loop"])
                       for a, b in zip(ours.values(), loop.values()))
            entry["identical"] = f"{same}/{len(cots) * len(RATES)}"
            entry["speedup"] = entry["modes"]["authors-loop"]["compress_s"] / entry["modes"]["authors"]["compress_s"]
            if same != len(cots) * len(RATES):
                report["sets"][name] = entry
                print(render(report))
                raise SystemExit(f"{name}: authors' scorer and the per-call loop differ")
        report["sets"][name] = entry
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

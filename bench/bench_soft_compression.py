"""Soft compression (OSCAR-style) on CPU: train on GSM8K CoTs, then measure what the embeddings keep.

The generator is the embedded SmolLM2-135M-Instruct; the compressor its first N layers. Contexts are
GSM8K reference solutions written as TokenSkip's CoTs (no `<<calc>>` notes, no `####` line): the
first `--n-train` of a seeded shuffle of the train split to train on, `--n-eval` of a seeded
shuffle of the test split to evaluate on. The whole run goes through `soft_compress.py` (train,
then evaluate), with the recipe (default configs/soft_compression/smollm2_135m_cpu.yaml) and any
`--set KEY=VALUE` on top. Evaluation compares, on the same held-out questions: the question alone,
question + text CoT, question + the CoT hard-compressed by CTS at `--hard-ratio` (reference model:
the generator), and question + the soft-compressed CoT.

    .venv/bin/python bench/bench_soft_compression.py --json OUT.json [--n-train 1000] [--n-eval 200] [--set lr=3e-4]

Writes OUT.json: positions_text, positions_soft, acc_question_only, acc_text, acc_soft, acc_hard,
n_eval, train_seconds (teacher answers included), gap_recovered, prefill and latency per condition,
and the settings. Without the GSM8K files it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.core.errors import UsageError  # noqa: E402
from tokenskip.core.jsonio import write_jsonl_atomic  # noqa: E402
from tokenskip.data.benchmarks import gsm8k_final_answer, gsm8k_solution_as_output  # noqa: E402
from tokenskip.models import embedded  # noqa: E402
from tokenskip.prompting.prompts import ANSWER_MARKER  # noqa: E402

DEFAULT_RECIPE = ROOT / "configs" / "soft_compression" / "smollm2_135m_cpu.yaml"
TRAIN_BUDGET_S = 20 * 60


def gsm8k_file(split: str) -> Path | None:
    roots = [ROOT / "datasets"]
    if os.environ.get("TOKENSKIP_DATA_DIR"):
        roots.append(Path(os.environ["TOKENSKIP_DATA_DIR"]).expanduser())
    roots.append(ROOT.parent / "shared" / "data")  # the CI layout beside the checkout
    files = [root / "gsm8k" / f"{split}.jsonl" for root in roots]
    return next((file for file in files if file.is_file()), None)


def cot_records(path: Path, n: int, seed: int, prefix: str) -> list[dict]:
    """`n` GSM8K problems (a seeded shuffle) as {id, question, cot, answer}: the reference solution as a CoT."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    records = []
    for index in order[:n]:
        row = rows[index]
        cot = gsm8k_solution_as_output(row["answer"]).split(ANSWER_MARKER)[0].strip()
        records.append({"id": f"{prefix}-{index}", "question": row["question"], "cot": cot,
                        "answer": gsm8k_final_answer(row["answer"])})
    return records


def overrides(pairs: Sequence[str]) -> list[str]:
    """`KEY=VALUE` pairs as train flags (`lr=3e-4` -> `--lr 3e-4`)."""
    argv = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=3e-4")
        argv += [f"--{key.replace('_', '-')}", value]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--n-train", type=int, default=1000,
                        help="training CoTs (default 1000: teacher answers and 125 steps fit in 20 minutes)")
    parser.add_argument("--n-eval", type=int, default=200, help="held-out test questions (default 200)")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a train flag on top of the recipe (repeatable), e.g. --set n_layers=8")
    parser.add_argument("--hard-ratio", type=float, default=0.5, help="γ of the hard-compressed condition (0: none)")
    parser.add_argument("--latency-probe", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the model and predictions here (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    train_file, test_file = gsm8k_file("train"), gsm8k_file("test")
    if train_file is None or test_file is None:
        print("skipped: no GSM8K train/test files (datasets/gsm8k, $TOKENSKIP_DATA_DIR/gsm8k or ../shared/data/gsm8k)")
        return 0
    if not embedded.is_materialized(embedded.default_dir(ROOT / "models")):
        embedded.materialize(ROOT / "models")
    from tokenskip.stages import soft as soft_stage

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(work / "train.jsonl", cot_records(train_file, args.n_train, args.seed, "train"))
        write_jsonl_atomic(work / "eval.jsonl", cot_records(test_file, args.n_eval, args.seed, "test"))
        model_dir = work / "model"
        train_argv = ["train", "--recipe", str(args.recipe), "--input", str(work / "train.jsonl"),
                      "--output-dir", str(model_dir), "--model-path", str(embedded.default_dir(ROOT / "models")),
                      "--device", "cpu", *overrides(args.overrides)]
        started = time.perf_counter()
        summary = soft_stage.main(train_argv)
        train_wall = time.perf_counter() - started
        eval_argv = ["evaluate", "--model-dir", str(model_dir), "--input", str(work / "eval.jsonl"),
                     "--output-dir", str(work / "eval"), "--device", "cpu",
                     "--latency-probe", str(args.latency_probe), "--max-answer-tokens", "10"]
        recipe = soft_stage.read_recipe(args.recipe)
        if recipe.get("dtype"):
            eval_argv += ["--dtype", str(recipe["dtype"])]
        if args.hard_ratio:
            eval_argv += ["--hard-ratio", str(args.hard_ratio), "--conditions", "question", "text", "hard", "soft"]
        started = time.perf_counter()
        metrics = soft_stage.main(eval_argv)
        eval_wall = time.perf_counter() - started
    result = {
        "positions_text": metrics["positions_text"],
        "positions_soft": metrics["positions_soft"],
        "position_ratio": metrics["position_ratio"],
        "acc_question_only": metrics["acc_question_only"],
        "acc_text": metrics["acc_text"],
        "acc_hard": metrics["acc_hard"],
        "acc_soft": metrics["acc_soft"],
        "gap_recovered": metrics["gap_recovered"],
        "n_eval": metrics["n_eval"],
        "n_train": summary["examples"],
        "steps": summary["steps"],
        "train_seconds": round(train_wall, 1),  # the whole train command: loading, teacher answers, steps, saving
        "teacher_seconds": summary["teacher_seconds"],
        "step_seconds": summary["train_seconds"],
        "within_train_budget": train_wall <= TRAIN_BUDGET_S,
        "eval_seconds": round(eval_wall, 1),
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "conditions": metrics["conditions"],
        "settings": metrics["settings"],
        "train_command": ["soft_compress.py", *train_argv],
        "hard_ratio": args.hard_ratio or None,
        "floor_met": bool(metrics["position_ratio"] and metrics["position_ratio"] >= 8
                          and metrics["gap_recovered"] is not None and metrics["gap_recovered"] >= 0.5),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    headline = {k: v for k, v in result.items() if k not in ("conditions", "settings", "train_command")}
    print(json.dumps(headline, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

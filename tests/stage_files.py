"""Small stage files and command lines that tests in several folders build: a stage-2 output tree
for stage 3 (make_run), a LLaMA-Factory checkout, an evaluation.py command line on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

from tokenskip.stages import llamafactory

SAMPLE_TEST = ROOT / "datasets" / "sample" / "test.jsonl"


def cli_args(model_dir, out_dir, *extra):
    return ["--model-path", str(model_dir), "--output-dir", str(out_dir), "--model-size", "tiny",
            "--benchmark", "gsm8k", "--data-type", "test", "--data-path", str(SAMPLE_TEST),
            "--backend", "hf", "--max_new_tokens", "8", "--eval_batch_size", "4", *extra]


def run_script(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "evaluation.py", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


QUESTIONS = {"q-0": ("Tom has 3 apples and buys 4. How many?", "7"), "q-1": ("What is 10 / 4?", "\\frac{5}{2}")}


COTS = {"q-0": "Tom has 3 + 4 = 7 apples.", "q-1": "10 / 4 = 2.5, which is \\frac{5}{2}."}


COMPRESSED = {0.9: {"q-0": "Tom 3 + 4 = 7 apples.", "q-1": "10 / 4 = 2.5 \\frac{5}{2}."},
              0.5: {"q-0": "3 + 4 = 7", "q-1": "10/4 = 2.5"}}


def write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make_run(root: Path, *, method_folder="Compression", order=("q-0", "q-1"), drop=None) -> Path:
    """A model outputs folder with formatted stage-1 CoTs and two ratio files."""
    formatted = [{"id": i, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ""}],
                  "model_output": COTS[i] + f" So the answer is \\boxed{{{a}}}.", "prediction": a, "accuracy": True,
                  "cot": COTS[i]} for i, (q, a) in QUESTIONS.items()]
    write_jsonl(root / "Original" / "train" / "samples" / "predictions_formatted.jsonl", formatted)
    for ratio, texts in COMPRESSED.items():
        lines = [{"id": i, "question": QUESTIONS[i][0], "compressed_cot": texts[i], "model_answer": QUESTIONS[i][1]}
                 for i in order if i != drop]
        write_jsonl(root / method_folder / f"train_outputs_compressed_ratio_{ratio}.jsonl", lines)
    return root


def convert(root: Path, *extra: str) -> list[dict]:
    out = root / "train.json"
    llamafactory.main(["--input-dir", str(root), "--ratios", "0.9", "0.5", "--output-file", str(out), *extra])
    return json.loads(out.read_text())


def lf_checkout(tmp_path: Path, info: str | None = "{}") -> Path:
    (tmp_path / "lf" / "data").mkdir(parents=True)
    if info is not None:
        (tmp_path / "lf" / "data" / "dataset_info.json").write_text(info)
    return tmp_path / "lf"

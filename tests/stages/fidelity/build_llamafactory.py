"""Build the stage-3 fixture: the original `get_llamafactory_input.py`'s output on given stage-2 files.

For each input set, the formatted CoTs and the five ratio files are stored here (in the layout both
the original and `get_llamafactory_input.py` read: `Original/train/samples/predictions_formatted.jsonl`,
`Compression/train_outputs_compressed_ratio_{γ}.jsonl`, only the fields either reads), and the
original script is run on them unchanged, in a scratch folder laid out as it expects; the JSON it
writes is stored as `original_output.json`. `tests/stages/test_llamafactory_fidelity.py` runs the
toolkit's stage 3 on the same files and compares the records field for field. Nothing of the
original's code is stored; it runs from the checkout named on the command line:

    python tests/stages/fidelity/build_llamafactory.py /tmp/TokenSkip --demo outputs/demo

(any Python with numpy, which the original script imports). The sets: `demo`, the demo's own
stage-2 files (`make demo`, compressed by CTS); `synthetic`, GSM8K train and MATH-500 solutions
with a deterministic word-dropping "compression" (LaTeX, unicode and list answers included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "llamafactory"
RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)
FORMATTED = Path("Original/train/samples/predictions_formatted.jsonl")
COMPRESSED = "Compression/train_outputs_compressed_ratio_{}.jsonl"
# the fields the original's get_llamafactory_input.py and the toolkit's stage 3 read (and the id they align by)
FORMATTED_FIELDS = ("id", "messages", "model_output", "prediction", "cot", "accuracy", "cot_length")
COMPRESSED_FIELDS = ("id", "question", "model_answer", "compressed_cot")
ORIGINAL_INPUT = Path("outputs/Qwen2.5-7B-Instruct/gsm8k/7b")  # where the original script reads (fixed)
ORIGINAL_OUTPUT = Path("outputs/mydataset_compressed_gsm8k_llmlingua2_qwen_7B.json")  # and writes
MARKER = "\n\nThe final answer is: "


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def keep(row: dict, fields: tuple[str, ...]) -> dict:
    return {field: row[field] for field in fields if field in row}


def demo_set(demo_dir: Path) -> tuple[list[dict], dict[float, list[dict]]]:
    model_dir = next(path.parent.parent.parent.parent for path in sorted(demo_dir.rglob(str(FORMATTED))))
    formatted = [keep(row, FORMATTED_FIELDS) for row in read_jsonl(model_dir / FORMATTED)]
    compression = next(
        folder
        for folder in sorted(model_dir.glob("*Compression"))
        if (folder / f"train_outputs_compressed_ratio_{RATIOS[0]}.jsonl").is_file()
    )
    compressed = {
        ratio: [
            keep(row, COMPRESSED_FIELDS)
            for row in read_jsonl(compression / f"train_outputs_compressed_ratio_{ratio}.jsonl")
        ]
        for ratio in RATIOS
    }
    return formatted, compressed


def drop_words(text: str, ratio: float) -> str:
    """Keep about `ratio` of the words, evenly spread (a stand-in for a compressor)."""
    words = text.split(" ")
    kept = max(1, math.ceil(len(words) * ratio))
    return " ".join(words[round(i * len(words) / kept)] for i in range(kept))


def synthetic_set(data_dir: Path) -> tuple[list[dict], dict[float, list[dict]]]:
    gsm8k = read_jsonl(data_dir / "gsm8k" / "train.jsonl")[:40]
    math500 = read_jsonl(data_dir / "math-500" / "test.jsonl")[:15]
    items = []
    for index, row in enumerate(gsm8k):
        cot = re.sub(r"<<[^<>]*>>", "", row["answer"].split("####")[0]).strip()
        items.append((f"gsm8k-train-{index}", row["question"], cot, row["answer"].split("####")[-1].strip()))
    for index, row in enumerate(math500):
        cot = row["solution"].rsplit("\\boxed", 1)[0].strip()
        items.append((f"math-train-{index}", row["problem"], cot, row["answer"]))
    formatted, compressed = [], {ratio: [] for ratio in RATIOS}
    for item_id, question, cot, answer in items:
        output = f"{cot}{MARKER}$\\boxed{{{answer}}}$"
        formatted.append(
            {
                "id": item_id,
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": ""}],
                "model_output": output,
                "prediction": answer,
                "cot": cot,
                "accuracy": True,
                "cot_length": len(cot.split()),
            }
        )
        for ratio in RATIOS:
            compressed[ratio].append(
                {"id": item_id, "question": question, "model_answer": answer, "compressed_cot": drop_words(cot, ratio)}
            )
    return formatted, compressed


def run_original(checkout: Path, formatted: list[dict], compressed: dict[float, list[dict]]) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_jsonl(root / ORIGINAL_INPUT / FORMATTED, formatted)
        for ratio, rows in compressed.items():
            write_jsonl(root / ORIGINAL_INPUT / COMPRESSED.format(ratio), rows)
        script = root / "get_llamafactory_input.py"
        shutil.copy(checkout / "get_llamafactory_input.py", script)  # run in the scratch folder only
        subprocess.run([sys.executable, str(script)], cwd=root, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        return (root / ORIGINAL_OUTPUT).read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original", type=Path, help="a checkout of hemingkx/TokenSkip")
    parser.add_argument("--demo", type=Path, required=True, help="the demo's output folder (outputs/demo)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TOKENSKIP_DATA_DIR", "../shared/data")))
    args = parser.parse_args()
    for name, (formatted, compressed) in {
        "demo": demo_set(args.demo),
        "synthetic": synthetic_set(args.data_dir),
    }.items():
        folder = HERE / name
        shutil.rmtree(folder, ignore_errors=True)
        write_jsonl(folder / FORMATTED, formatted)
        for ratio, rows in compressed.items():
            write_jsonl(folder / COMPRESSED.format(ratio), rows)
        output = run_original(args.original, formatted, compressed)
        (folder / "original_output.json").write_bytes(output)  # as the original wrote it, byte for byte
        print(f"{name}: {len(formatted)} CoTs -> {len(json.loads(output))} records")


if __name__ == "__main__":
    main()

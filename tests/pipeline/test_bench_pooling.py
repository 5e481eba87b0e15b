"""bench/bench_pooling.py on a tiny model's finished sweep: pooled and run-by-run generation agree request for
request and with what the sweep recorded, and both are timed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from stage_files import cli_args

from tokenskip.stages import evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_pooled_runs_answer_as_the_runs_did(tiny_adapter, tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "6", "--use_adapter", "--adapter-path",
                           str(tiny_adapter), "--compression_ratio", "1.0", "0.5"))
    runs = [tmp_path / "tiny" / "TokenSkip" / ratio for ratio in ("1.0", "0.5")]
    out = tmp_path / "pooling.json"
    result = subprocess.run([sys.executable, "bench/bench_pooling.py", "--runs", *map(str, runs), "--adapter",
                             str(tiny_adapter), "--slots", "4", "--tokens", "8", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["prompts"] == 12 and found["identical"] == 12 and found["as_recorded"] == 12
    assert found["separate_s"] > 0 and found["pooled_s"] > 0 and found["tokens"] > 0

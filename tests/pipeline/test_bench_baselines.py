"""bench/bench_baselines.py --nothinking on the embedded model (a few questions, a few tokens): the embedded weights
under DeepSeek-R1's template think, NoThinking does not, and the part lands in the results file and its rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="the shared GSM8K test file is absent")
def test_nothinking_part_on_the_embedded_weights(smollm2_dir, tmp_path):
    results = tmp_path / "baselines.json"
    sweep = {"command": "python evaluation.py ...", "questions": 3, "tokens": 24, "backend": "hf", "wall_s": 1.0,
             "rows": [], "frontier": [], "checks": {"per_ratio": {}}}
    results.write_text(json.dumps(sweep))
    command = [sys.executable, "bench/bench_baselines.py", "--nothinking", "--backend", "hf", "--questions", "3",
               "--tokens", "24", "--out-dir", str(tmp_path / "runs"), "--json", str(results)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    part = json.loads(results.read_text())["nothinking"]
    thinking, nothinking = part["checks"]["original"], part["checks"]["nothinking"]
    # the template opens <think>: every base output is a thinking one; NoThinking closed it in the prompt
    assert thinking["n_thinking"] == thinking["n"] == 3 and thinking["mean_thinking_tokens"] > 0
    assert nothinking["n_thinking"] == 0 and nothinking["mean_thinking_tokens"] == 0
    assert "evaluation.py" in part["command"] and "--runs original nothinking" in part["command"]
    rendered = subprocess.run([sys.executable, "bench/bench_baselines.py", "--render", str(results)], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    assert "| NoThinking | " in rendered and "| thinking (the template's own) | " in rendered
    # a results file of another size is refused, not mixed
    other = [*command[:command.index("--questions") + 1], "4", *command[command.index("--questions") + 2:]]
    refused = subprocess.run(other, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "pass the same --questions and --tokens" in refused.stderr

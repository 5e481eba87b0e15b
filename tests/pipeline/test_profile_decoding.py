"""bench/profile_decoding.py runs end to end on a tiny model: a step's parts add up to the step, every row count is
profiled, and the table it prints is the one bench/README.md shows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_profile_splits_each_step_into_its_parts(tiny_lm_dir, tmp_path):
    out = tmp_path / "profile.json"
    result = subprocess.run(
        [sys.executable, "bench/profile_decoding.py", "--model-path", str(tiny_lm_dir), "--slots", "2", "4",
         "--context", "16", "--steps", "6", "--peak-gflops", "100", "--bandwidth-gbs", "20", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    profile = json.loads(out.read_text())
    assert [row["slots"] for row in profile["rows"]] == [2, 4]
    assert profile["peak_gflops"] == 100 and not profile["peak_measured"]
    for row in profile["rows"]:
        assert row["steps"] == 6 and row["step_ms"] > 0
        assert abs(sum(row["parts_share"].values()) - 1) < 0.01
        assert abs(sum(row["parts_ms"].values()) - row["step_ms"]) < 0.05 * row["step_ms"] + 0.05
        assert row["parts_ms"]["matmul"] > 0 and row["parts_ms"]["attention"] > 0 and row["parts_ms"]["cache"] > 0
        assert row["tokens_per_s"] > 0 and row["limit"]["tokens_per_s"] > 0
    header = next(line for line in (ROOT / "bench" / "README.md").read_text().splitlines()
                  if line.startswith("| slots | step ms |"))
    assert header in result.stdout

"""bench/gpu_check.sh in its CPU-only mode: the script a GPU machine will run must work end to end here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # about 70 s on 2 cores: three evaluation.py processes, a training loop, the scorer
def test_cpu_smoke_prints_the_table_and_passes():
    # PYTHON: the interpreter running the tests, so the script uses this environment, not a guess
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=480)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "--cpu-smoke: GPU checks skipped" in out
    header = next(line for line in out.splitlines() if line.startswith("check "))
    assert [cell.strip() for cell in header.split("|")] == ["check", "device/dtype", "result", "seconds", "status"]
    table = out[out.index(header):].split("\n\n")[0]  # the table ends at the first blank line
    for check in ("imports of the checked code", "evaluation.py base", "evaluation.py adapter", "adapter vs base",
                  "LoRA training", "LoRA adapter save + peft reload", "LLMLingua-2 scorer"):
        row = next(line for line in table.splitlines() if line.startswith(check))
        assert row.rstrip().endswith("PASS"), row
    assert "FAIL" not in table
    assert "0 FAIL" in out

"""Product code names no path of one machine (a home, a notes folder, this checkout's location)."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

# The files this check covers. bench/bench_llmlingua2.py and tokenskip/scorers/llmlingua2.py still
# name /tmp/notes in their docstrings; add them here once that is gone.
CHECKED = sorted({*ROOT.glob("*.py"), ROOT / "eval.sh", *(ROOT / "scripts").glob("*.sh"),
                  ROOT / "bench" / "bench_grading.py",
                  *(ROOT / "tokenskip" / name for name in ("cli.py", "download.py", "embedded.py", "report.py"))})
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|Users|tmp/notes)(?:/|\b)|\bnotes/")


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_machine_specific_path(path):
    hits = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if MACHINE_PATH.search(line)]
    assert hits == []

"""Product code names no path of one machine (a home, a notes folder, this checkout's location)."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

# The files this check covers: every entry point, shell script, package module and benchmark.
CHECKED = sorted({*ROOT.glob("*.py"), ROOT / "eval.sh", *(ROOT / "scripts").glob("*.sh"),
                  *(ROOT / "bench").glob("*.py"), *(ROOT / "bench").glob("*.sh"),
                  *(ROOT / "tokenskip").rglob("*.py")})
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|Users|tmp/notes)(?:/|\b)|\bnotes/")


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_machine_specific_path(path):
    hits = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if MACHINE_PATH.search(line)]
    assert hits == []

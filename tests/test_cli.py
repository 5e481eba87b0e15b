"""Every entry point explains itself and refuses a typo in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ["evaluation.py", "LLMLingua.py", "llmlingua_ner.py", "CTS_data_get.py", "get_llamafactory_input.py",
           "copy_to_llamafactory.py", "register_dataset.py", "download_models.py", "report.py"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    result = run(script, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"usage: {script}"), result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_is_one_line(script):
    result = run(script, "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unrecognized arguments: --no-such-flag" in result.stderr or "required" in result.stderr


def test_eval_sh_rejects_nothing_silently_when_the_model_is_missing(tmp_path):
    result = subprocess.run(["bash", "eval.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PATHS_ENV": str(tmp_path / "x"),
                                 "MODEL_PATH": str(tmp_path / "models" / "none"), "OUTPUT_DIR": str(tmp_path / "o")})
    assert result.returncode == 2 and "download_models.py" in result.stderr

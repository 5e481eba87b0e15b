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


def test_a_missing_package_is_one_line_naming_it(capsys):
    from tokenskip.cli import run_cli

    def needs_peft(argv):
        raise ModuleNotFoundError("No module named 'peft'", name="peft")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(needs_peft, [])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the package 'peft' is not installed") and "make setup" in line


def test_a_missing_module_of_our_own_is_a_bug_not_a_user_error():
    from tokenskip.cli import run_cli

    def broken(argv):
        raise ModuleNotFoundError("No module named 'tokenskip.nope'", name="tokenskip.nope")

    with pytest.raises(ModuleNotFoundError):
        run_cli(broken, [])

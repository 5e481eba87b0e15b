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


# --- a Python without the project's packages ----------------------------------------------------
# eval.sh and the stage scripts fall back to a bare `python3` when .venv is absent. `-S` gives the
# same interpreter here: no site-packages at all (neither the venv's nor the system's), while the
# scripts still find tokenskip/ next to them.

def bare_invocation(script: str, tmp_path) -> tuple[list[str], str | None]:
    """A real command line for `script` (one that imports its stage and goes to work) and the line
    expected on stderr: a missing package's message, or None where the stage needs only the stdlib."""
    tree = tmp_path / "o" / "7b"
    (tree / "Original" / "test" / "samples").mkdir(parents=True)
    (tree / "Original" / "test" / "samples" / "metrics.json").write_text(
        '{"accuracy": 0.5, "avg_cot_length": 10.0, "sample_latency": 1.0, "n_samples": 2}')
    (tmp_path / "lf" / "data").mkdir(parents=True)
    (tmp_path / "lf" / "data" / "dataset_info.json").write_text("{}")
    (tmp_path / "lf" / "data" / "registered.json").write_text("[]")
    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "predictions.jsonl").write_text('{"id": "1"}\n')
    missing = "is not installed in"
    return {
        "evaluation.py": (["--model-path", str(tmp_path / "m"), "--data-path", "datasets/sample/test.jsonl",
                          "--output-dir", str(tmp_path / "e")], missing),
        "LLMLingua.py": (["--input-dir", str(tree)], missing),
        "llmlingua_ner.py": (["--input-dir", str(tree)], missing),
        "CTS_data_get.py": (["--input_data", str(tmp_path / "predictions.jsonl"), "--reference_model",
                             str(tmp_path / "m")], missing),
        "get_llamafactory_input.py": (["--input-dir", str(tree)], missing),
        "copy_to_llamafactory.py": (["--llamafactory-dir", str(tmp_path / "lf"), "--source-file",
                                     str(tmp_path / "train.json")], None),
        "register_dataset.py": (["--llamafactory-dir", str(tmp_path / "lf"), "--dataset-file", "registered.json"],
                                None),
        "download_models.py": (["--embedded", "--base-dir", str(tmp_path / "models")], missing),
        "report.py": ([str(tmp_path / "o")], missing),
    }[script]


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bare_interpreter_gets_one_line_naming_the_missing_package(script, tmp_path):
    args, expected = bare_invocation(script, tmp_path)
    result = run("-S", script, *args)
    assert "Traceback" not in result.stderr, result.stderr
    if expected is None:  # a stage that needs only the standard library just works
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: the package '") and expected in line and "make setup" in line


def test_run_cli_imports_a_stage_named_by_its_module(tmp_path, monkeypatch, capsys):
    """`run_cli("module:function")` imports the stage inside the guard, so an import-time failure is caught."""
    from tokenskip.cli import run_cli

    (tmp_path / "stage_needing_a_package.py").write_text("import no_such_package_xyz\n\ndef main(argv):\n    pass\n")
    (tmp_path / "stage_fine.py").write_text("CALLS = []\n\ndef main(argv):\n    CALLS.append(argv)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        run_cli("stage_needing_a_package:main", [])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the package 'no_such_package_xyz' is not installed")
    run_cli("stage_fine:main", ["--x"])
    import stage_fine

    assert stage_fine.CALLS == [["--x"]]


def test_every_entry_script_names_its_stage_lazily():
    """An entry script that imports its stage at the top escapes run_cli's guard (see the test above)."""
    for script in SCRIPTS:
        text = (ROOT / script).read_text()
        assert "from tokenskip.cli import run_cli" in text
        imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
        assert imports == ["from tokenskip.cli import run_cli"], (script, imports)

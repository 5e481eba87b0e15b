"""Every entry point explains itself and refuses a typo in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from stage_files import make_run

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
    from tokenskip.core.cli import run_cli

    def needs_peft(argv):
        raise ModuleNotFoundError("No module named 'peft'", name="peft")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(needs_peft, [])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the package 'peft' is not installed") and "make setup" in line


def test_a_missing_module_of_our_own_is_a_bug_not_a_user_error():
    from tokenskip.core.cli import run_cli

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
    (tmp_path / "m").mkdir()
    # stage 1's output on the train split, for stage 2 (which goes on to load the model's tokenizer) ...
    train = tree / "Original" / "train" / "samples"
    train.mkdir(parents=True)
    (train / "metrics.json").write_text(json.dumps({"model_path": str(tmp_path / "m"), "model_type": "qwen"}))
    (train / "predictions.jsonl").write_text(json.dumps({
        "id": "q-0", "messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": ""}],
        "answer": "4", "model_output": "2 + 2 = 4.\nThe final answer is: $\\boxed{4}$", "prediction": "4",
        "accuracy": True}) + "\n")
    # ... and stage 2's, for stage 3 (pure JSON work: the standard library is enough)
    lingua_tree = tmp_path / "l" / "7b"
    make_run(lingua_tree)
    missing = "is not installed in"
    return {
        "evaluation.py": (["--model-path", str(tmp_path / "m"), "--data-path", "datasets/sample/test.jsonl",
                          "--output-dir", str(tmp_path / "e")], missing),
        "LLMLingua.py": (["--input-dir", str(tree), "--llmlingua-path", str(tmp_path / "m")], missing),
        "llmlingua_ner.py": (["--input-dir", str(tree), "--llmlingua-path", str(tmp_path / "m")], missing),
        "CTS_data_get.py": (["--input_data", str(tmp_path / "predictions.jsonl"), "--reference_model",
                             str(tmp_path / "m")], missing),
        "get_llamafactory_input.py": (["--input-dir", str(lingua_tree), "--ratios", "0.9", "0.5", "--output-file",
                                       str(tmp_path / "lf.json")], None),
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


def test_a_stage_imported_inside_the_guard_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """`with user_errors(): from stage import main` catches an import-time failure of the stage."""
    from tokenskip.core.cli import user_errors

    (tmp_path / "stage_needing_a_package.py").write_text("import no_such_package_xyz\n\ndef main(argv):\n    pass\n")
    (tmp_path / "stage_fine.py").write_text("CALLS = []\n\ndef main(argv=None):\n    CALLS.append(argv)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as exit_info, user_errors():
        from stage_needing_a_package import main  # noqa: F401
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: the package 'no_such_package_xyz' is not installed")
    with user_errors():
        from stage_fine import main

        main(["--x"])
    import stage_fine

    assert stage_fine.CALLS == [["--x"]]


def test_every_entry_script_imports_its_stage_inside_the_guard():
    """An entry script that imports its stage at the top escapes the guard (see the test above)."""
    for script in SCRIPTS:
        lines = (ROOT / script).read_text().splitlines()
        top = [line for line in lines if line.startswith(("import ", "from "))]
        assert top == ["from tokenskip.core.cli import user_errors"], (script, top)
        guard = lines.index('    with user_errors():  # the stage is imported inside: a missing package is one line, '
                            'not a traceback')
        assert lines[guard + 1].startswith("        from tokenskip.stages."), (script, lines[guard + 1])

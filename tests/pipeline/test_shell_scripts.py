"""The shell drivers (eval.sh, scripts/*.sh): settings checked up front, paths asked of tokenskip.core.layout.

PYTHON points at a fake interpreter that records each stage script's command line instead of
running it (so no model is needed), except `-m tokenskip.core.layout`, which it hands to the real one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.core import layout

SHELL_SCRIPTS = sorted([ROOT / "eval.sh", *(ROOT / "scripts").glob("*.sh")])


@pytest.fixture()
def fake(tmp_path):
    """Run a driver with the fake interpreter; returns (result, the recorded command lines)."""
    log = tmp_path / "calls.jsonl"
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -m ]; then exec {sys.executable} "$@"; fi\n'
        f"exec {sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> {log}\n")
    python.chmod(0o755)
    # stage 4's default: llamafactory-cli next to the interpreter
    (python.parent / "llamafactory-cli").symlink_to(python)

    def run(script: str, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        environ = {"PATH": "/usr/bin:/bin", "PYTHON": str(python), "PATHS_ENV": str(tmp_path / "no-paths.env"),
                   "OUTPUT_DIR": str(tmp_path / "o") + "/", "MODEL_PATH": str(tmp_path / "model"), **env}
        result = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                                env=environ)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return result, calls

    return run


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(word in line for word in words), line
    return line


def values_of(call: list[str], flag: str) -> list[str]:
    """The values after `flag` in a command line, up to the next flag."""
    start = call.index(flag) + 1
    end = next((i for i in range(start, len(call)) if call[i].startswith("--")), len(call))
    return call[start:end]


# --- eval.sh: USE_ADAPTER ---------------------------------------------------------------------

@pytest.mark.parametrize("value, used", [("1", True), ("true", True), ("YES", True), ("Yes", True),
                                         ("0", False), ("false", False), ("No", False)])
def test_use_adapter_accepts_yes_and_no_spellings(fake, tmp_path, value, used):
    result, [call] = fake("eval.sh", USE_ADAPTER=value, ADAPTER_PATH=str(tmp_path / "adapter"))
    assert result.returncode == 0, result.stderr
    assert ("--use_adapter" in call) is used
    assert (values_of(call, "--adapter-path") == [str(tmp_path / "adapter")]) if used else \
        "--adapter-path" not in call


@pytest.mark.parametrize("value", ["2", "y", "on", "yes please", "adapter"])
def test_use_adapter_refuses_anything_else(fake, tmp_path, value):
    result, calls = fake("eval.sh", USE_ADAPTER=value, ADAPTER_PATH=str(tmp_path / "adapter"))
    assert_one_line_error(result, "USE_ADAPTER", f"'{value}'")
    assert calls == []


# --- eval.sh: where the outputs go, and the default γ ------------------------------------------

def test_eval_sh_outputs_follow_the_model(fake, tmp_path):
    result, [call] = fake("eval.sh", OUTPUT_DIR="", MODEL_PATH="models/SmolLM2-135M-Instruct", USE_ADAPTER="0")
    assert result.returncode == 0, result.stderr
    assert values_of(call, "--output-dir") == ["outputs/SmolLM2-135M-Instruct/gsm8k/"]
    result, [call] = fake("eval.sh", OUTPUT_DIR="", MODEL_PATH="/abs/Qwen3-8B/", BENCHMARK="math", USE_ADAPTER="0")
    assert values_of(call, "--output-dir") == ["outputs/Qwen3-8B/math/"]
    result, [call] = fake("eval.sh", OUTPUT_DIR="mine/", USE_ADAPTER="0")
    assert values_of(call, "--output-dir") == ["mine/"]


def test_eval_sh_default_ratio_is_untagged_for_the_base_model(fake, tmp_path):
    # the base model alone never learned the tag: γ 1.0; the adapter and the baselines: the original's 0.5
    result, [call] = fake("eval.sh", USE_ADAPTER="0")
    assert values_of(call, "--compression_ratio") == ["1.0"]
    result, [call] = fake("eval.sh", ADAPTER_PATH=str(tmp_path / "adapter"))
    assert "--use_adapter" in call and values_of(call, "--compression_ratio") == ["0.5"]
    result, [call] = fake("eval.sh", USE_ADAPTER="0", BASELINE="truncation")
    assert values_of(call, "--compression_ratio") == ["0.5"]
    for no_ratio in ("cod", "nothinking"):  # baselines without γ: 1.0, which evaluation.py asks of them
        result, [call] = fake("eval.sh", USE_ADAPTER="0", BASELINE=no_ratio)
        assert values_of(call, "--compression_ratio") == ["1.0"] and values_of(call, "--baseline") == [no_ratio]
    result, [call] = fake("eval.sh", USE_ADAPTER="0", COMPRESSION_RATIO="0.7")
    assert values_of(call, "--compression_ratio") == ["0.7"]
    # a budget given in tokens replaces γ: the untagged 1.0 (which evaluation.py asks of it), the budgets word by word
    result, [call] = fake("eval.sh", USE_ADAPTER="0", BASELINE="budget", BUDGET_TOKENS="64 128")
    assert values_of(call, "--compression_ratio") == ["1.0"]
    assert values_of(call, "--budget-tokens") == ["64", "128"]


# --- RATIOS, in every driver that takes it ----------------------------------------------------

# the driver, the environment it needs, and the flag its stage script gets the ratios with
RATIO_DRIVERS = {
    "eval.sh": ({}, "--compression_ratio"),
    "scripts/5_evaluate.sh": ({"ADAPTER_PATH": "adapter"}, "--compression_ratio"),
    "scripts/2_compress.sh": ({"METHOD": "llmlingua2"}, "--ratios"),
    "scripts/2_compress.sh cts": ({"METHOD": "cts"}, "--ratios"),
    "scripts/3_convert.sh": ({}, "--ratios"),
}


@pytest.mark.parametrize("driver", RATIO_DRIVERS)
@pytest.mark.parametrize("ratios, expected", [("0.9 0.5", ["0.9", "0.5"]), ("  1.0\t0.5 ", ["1.0", "0.5"]),
                                              (".5", [".5"]), ("0.9\n0.5\n", ["0.9", "0.5"])])
def test_ratios_are_passed_word_by_word(fake, driver, ratios, expected):
    env, flag = RATIO_DRIVERS[driver]
    result, [call] = fake(driver.split()[0], RATIOS=ratios, **env)
    assert result.returncode == 0, result.stderr
    assert values_of(call, flag) == expected


@pytest.mark.parametrize("driver", RATIO_DRIVERS)
@pytest.mark.parametrize("ratios", ["", "  ", "*", "0.?", "0.9,0.5", "half", "0.5 x"])
def test_ratios_must_be_numbers(fake, driver, ratios):
    env, _ = RATIO_DRIVERS[driver]
    result, calls = fake(driver.split()[0], RATIOS=ratios, **env)
    line = assert_one_line_error(result, "RATIOS")
    assert calls == []
    assert "eval.sh" not in line and "README" not in line  # '*' must not have become the file names here


def test_unset_ratios_keep_their_defaults(fake):
    result, [call] = fake("eval.sh")  # no adapter: the base model, untagged
    assert values_of(call, "--compression_ratio") == ["1.0"]
    result, [call] = fake("eval.sh", COMPRESSION_RATIO="0.7")
    assert values_of(call, "--compression_ratio") == ["0.7"]
    result, [call] = fake("scripts/2_compress.sh")
    assert values_of(call, "--ratios") == ["0.9", "0.8", "0.7", "0.6", "0.5"]


# --- paths come from tokenskip.core.layout ---------------------------------------------------------

def test_cts_reads_the_stage1_predictions_the_layout_names(fake, tmp_path):
    result, [call] = fake("scripts/2_compress.sh", METHOD="cts", MODEL_SIZE="3b")
    assert result.returncode == 0, result.stderr
    assert call[0] == "CTS_data_get.py"
    assert values_of(call, "--input_data") == [str(layout.stage1_predictions(layout.model_dir(tmp_path / "o", "3b")))]


def test_cts_reference_model_is_stage_1s_unless_given_and_cts_authors_is_a_method(fake, tmp_path):
    result, [call] = fake("scripts/2_compress.sh", METHOD="cts")
    assert "--reference_model" not in call  # CTS_data_get.py takes (and names) the model stage 1 recorded
    result, [call] = fake("scripts/2_compress.sh", METHOD="cts", REFERENCE_MODEL="models/Other")
    assert values_of(call, "--reference_model") == ["models/Other"] and "--selection" not in call
    result, [call] = fake("scripts/2_compress.sh", METHOD="cts_authors")
    assert call[0] == "CTS_data_get.py" and values_of(call, "--selection") == ["authors"]
    result, calls = fake("scripts/2_compress.sh", METHOD="cts2")
    assert_one_line_error(result, "METHOD", "cts_authors")


def test_llmlingua_reads_the_model_folder_the_layout_names(fake, tmp_path):
    result, [call] = fake("scripts/2_compress.sh", METHOD="ner", MODEL_SIZE="3b")
    assert call[0] == "llmlingua_ner.py"
    assert values_of(call, "--input-dir") == [str(layout.model_dir(tmp_path / "o", "3b"))]


def code_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_no_driver_spells_an_outputs_tree_path(script):
    """The folder names of stage 1's CoTs and stage 2's output belong to tokenskip/core/layout.py alone."""
    spelled = [*layout.COMPRESSION_FOLDERS.values(), "train/samples", layout.PREDICTIONS]
    for line in code_lines(script):
        for name in spelled:
            assert not re.search(rf"\b{re.escape(name)}\b", line), (name, line)


def test_demo_prints_where_everything_went(fake, tmp_path):
    """The demo end to end with the fake interpreter: every stage gets its command line, and the
    summary names the folders the layout module gives."""
    demo = tmp_path / "demo"
    result, calls = fake("scripts/demo.sh", DEMO_DIR=str(demo), OUTPUT_DIR="", MODEL_PATH="")
    assert result.returncode == 0, result.stderr
    assert [call[0] for call in calls] == [
        "download_models.py", "./evaluation.py", "CTS_data_get.py", "get_llamafactory_input.py", "train",
        "./evaluation.py", "report.py"]
    model = layout.model_dir(demo / "SmolLM2-135M-Instruct" / "gsm8k", "135m")
    # stage 5 in one call: the base model, the adapter at every γ and both baselines, the model loaded once each
    assert values_of(calls[5], "--runs") == ["original", "tokenskip", "truncation", "prompt"]
    assert values_of(calls[5], "--baseline-ratios") == ["0.9", "0.7", "0.5"]
    assert values_of(calls[5], "--compression_ratio") == ["1.0", "0.9", "0.8", "0.7", "0.6", "0.5"]
    assert values_of(calls[2], "--input_data") == [str(layout.stage1_predictions(model))]
    summary = dict(re.findall(r"^  (\S.*?\S)  +(\S.*)$", result.stdout, re.M))
    assert summary["stage-1 CoTs"] == f"{layout.stage1_samples(model)}/"
    assert summary["compressed CoTs"] == f"{layout.compression_dir(model, 'cts')}/"
    runs = "{Original/test,TokenSkip/<γ>,Truncation/<γ>,PromptReduction/<γ>}"
    assert summary["evaluations"] == f"{model}/{runs}/samples/"


# --- eval.sh: scaling out ----------------------------------------------------------------------

def test_shard_and_data_parallel_settings_reach_evaluation(fake):
    result, [call] = fake("eval.sh", NUM_SHARDS="4", SHARD_INDEX="2", USE_ADAPTER="0")
    assert result.returncode == 0, result.stderr
    assert values_of(call, "--num-shards") == ["4"] and values_of(call, "--shard-index") == ["2"]
    result, [call] = fake("eval.sh", NUM_SHARDS="4", MERGE_SHARDS="yes", USE_ADAPTER="0")
    assert "--merge-shards" in call and "--shard-index" not in call
    result, [call] = fake("eval.sh", DATA_PARALLEL_SIZE="8", USE_ADAPTER="0")
    assert values_of(call, "--data-parallel-size") == ["8"] and "--num-shards" not in call


def test_engine_parallel_and_ray_settings_reach_evaluation(fake):
    result, [call] = fake("eval.sh", USE_ADAPTER="0")
    assert result.returncode == 0, result.stderr
    assert not {"--tensor_parallel_size", "--pipeline_parallel_size", "--distributed-executor-backend"} & set(call)
    result, [call] = fake("eval.sh", BACKEND="ray", DATA_PARALLEL_SIZE="4", TENSOR_PARALLEL_SIZE="2", USE_ADAPTER="0")
    assert values_of(call, "--backend") == ["ray"] and values_of(call, "--data-parallel-size") == ["4"]
    assert values_of(call, "--tensor_parallel_size") == ["2"]
    result, [call] = fake("eval.sh", BACKEND="vllm", TENSOR_PARALLEL_SIZE="8", PIPELINE_PARALLEL_SIZE="2",
                          DISTRIBUTED_EXECUTOR_BACKEND="ray", USE_ADAPTER="0")
    assert values_of(call, "--pipeline_parallel_size") == ["2"]
    assert values_of(call, "--distributed-executor-backend") == ["ray"]
    assert "--gpu-memory-utilization" not in call
    result, [call] = fake("eval.sh", BACKEND="vllm", GPU_MEMORY_UTILIZATION="0.5", USE_ADAPTER="0")
    assert values_of(call, "--gpu-memory-utilization") == ["0.5"]

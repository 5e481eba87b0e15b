"""Stage 4's launch (tokenskip/stages/train.py, scripts/4_train.sh): torchrun through LLaMA-Factory's
launcher, the recipe's global batch kept on any world size, and two CPU processes (gloo) against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from testkit.lf_adapters import DATASET, write_dataset
from tokenskip.core.errors import UsageError
from tokenskip.stages import train
from tokenskip.training.plan import plan_training, world_of

RECIPES = sorted((ROOT / "configs" / "examples").glob("*/*.yaml"))
TOKENSKIP_7B = ROOT / "configs/examples/train_lora/myllama3_lora_sft_compressed_gsm8k_llmlingua2_qwen_7B.yaml"
CPU_RECIPE = ROOT / "configs/examples/train_lora/smollm2_135m_lora_sft_cpu.yaml"
TORCHRUN = {"FORCE_TORCHRUN": "1"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
@pytest.mark.parametrize("nodes, per_node", [(1, 1), (1, 2), (1, 8), (4, 8)])
def test_every_recipe_keeps_its_global_batch_on_any_world_size(recipe, nodes, per_node):
    one = plan_training(recipe, [], {}, gpus=1)
    env = {**TORCHRUN, "NNODES": str(nodes), "NPROC_PER_NODE": str(per_node)}
    wanted = one.global_batch
    if wanted % (one.per_device * nodes * per_node):
        with pytest.raises(UsageError, match="does not split over"):
            plan_training(recipe, [], env, gpus=per_node)
        return
    plan = plan_training(recipe, [], env, gpus=per_node)
    assert plan.world_size == nodes * per_node
    assert plan.global_batch == plan.per_device * plan.accumulation * plan.world_size == wanted


def test_tokenskip_recipes_train_with_a_global_batch_of_8():
    text = TOKENSKIP_7B.read_text()
    assert "global_batch" not in text  # 8 comes from the recipe's own per-device 1 x accumulation 8
    assert plan_training(TOKENSKIP_7B, [], {}, gpus=1).global_batch == 8
    eight = plan_training(TOKENSKIP_7B, [], {**TORCHRUN, "NPROC_PER_NODE": "8"}, gpus=8)
    assert eight.accumulation == 1 and "gradient_accumulation_steps=1" in eight.overrides
    two = plan_training(TOKENSKIP_7B, [], {}, gpus=2)  # 2 GPUs visible: LLaMA-Factory starts torchrun anyway
    assert two.world_size == 2 and two.accumulation == 4


def test_the_users_values_stand_and_deepspeed_is_added():
    plan = plan_training(TOKENSKIP_7B, ["gradient_accumulation_steps=2", "dataset=mine"],
                         {**TORCHRUN, "NPROC_PER_NODE": "8"}, gpus=8, deepspeed="z2")
    assert plan.accumulation == 2 and plan.global_batch == 16  # said, not silently fixed
    assert plan.overrides == ("gradient_accumulation_steps=2", "dataset=mine",
                              "deepspeed=configs/deepspeed/ds_z2_config.json")
    for name in ("ds_z2_config.json", "ds_z3_config.json"):
        config = json.loads((ROOT / "configs" / "deepspeed" / name).read_text())
        assert config["zero_optimization"]["stage"] == int(name[4])
        assert config["gradient_accumulation_steps"] == "auto"  # LLaMA-Factory's value reaches DeepSpeed


@pytest.mark.parametrize("env, overrides, message", [
    ({**TORCHRUN, "NPROC_PER_NODE": "3"}, [], "global batch of 8 does not split over 3"),
    ({**TORCHRUN, "NNODES": "two"}, [], "NNODES must be a positive integer"),
    ({}, ["dataset"], "an override is key=value"),
])
def test_bad_launch_settings_are_one_line(env, overrides, message):
    with pytest.raises(UsageError, match=message):
        plan_training(TOKENSKIP_7B, overrides, env, gpus=0)


def test_empty_variables_mean_the_launchers_defaults():
    assert world_of({"FORCE_TORCHRUN": "1", "NNODES": "", "NPROC_PER_NODE": ""}, gpus=0) == (1, 1)
    assert world_of({"NPROC_PER_NODE": "4"}, gpus=1) == (1, 1)  # no torchrun: one process


def test_the_script_passes_the_launch_through(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DRY_RUN": "1", "FORCE_TORCHRUN": "1", "NNODES": "2",
           "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "NPROC_PER_NODE": "4",
           "DEEPSPEED": "z3", "TRAIN_OVERRIDES": "dataset=mine"}
    result = subprocess.run(["bash", "scripts/4_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 node(s) x 4 process(es): global batch 8 = per-device 1 x accumulation 1 x world size 8" in result.stdout
    assert ("FORCE_TORCHRUN=1 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NPROC_PER_NODE=4"
            in result.stdout)
    assert "dataset=mine gradient_accumulation_steps=1 deepspeed=configs/deepspeed/ds_z3_config.json" in result.stdout


def lora_run(smollm2_dir: Path, data: Path, out: Path, env: dict) -> dict:
    overrides = [f"model_name_or_path={smollm2_dir}", f"dataset={DATASET}", f"dataset_dir={data}", f"output_dir={out}",
                 "lora_rank=8", "lora_alpha=16", "max_steps=4", "logging_steps=1", "warmup_ratio=0",
                 "learning_rate=2e-3", "per_device_train_batch_size=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true",
           "PATHS_ENV": str(out.parent / f"{out.name}.paths.env"), **env}
    result = subprocess.run([sys.executable, "-m", "tokenskip.stages.train", "--global-batch", "4", str(CPU_RECIPE),
                             *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    return {"log": result.stdout + result.stderr, "state": state,
            "losses": [entry["loss"] for entry in state["log_history"] if "loss" in entry]}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two processes need two cores")
def test_two_cpu_processes_train_the_adapter_one_process_trains(smollm2_dir, tmp_path):
    """torchrun with 2 processes (gloo): per-device 2 x 2 processes, against 1 process with per-device 2 x
    accumulation 2. The same global batch of the same examples: the same losses, the same weights."""
    from safetensors.torch import load_file

    data = write_dataset(tmp_path / "ds", n=32)
    two = lora_run(smollm2_dir, data, tmp_path / "two", {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"})
    one = lora_run(smollm2_dir, data, tmp_path / "one", {})
    assert "world size: 2, device: cpu" in two["log"] and "accumulation 1 x world size 2" in two["log"]
    assert "accumulation 2 x world size 1" in one["log"]
    assert one["state"]["global_step"] == two["state"]["global_step"] == 4
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5)
    weights_one, weights_two = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("one", "two"))
    assert weights_one.keys() == weights_two.keys()
    assert max(float((weights_one[k] - weights_two[k]).abs().max()) for k in weights_one) < 1e-5
    # the two-process adapter is a stage-5 adapter like any other
    from tokenskip.stages import evaluate

    [metrics] = evaluate.main(["--model-path", str(smollm2_dir), "--adapter-path", str(tmp_path / "two"),
                               "--use_adapter", "--compression_ratio", "0.5", "--output-dir", str(tmp_path / "eval"),
                               "--model-size", "135m", "--data-path", str(ROOT / "datasets/sample/test.jsonl"),
                               "--backend", "hf", "--max_num_examples", "2", "--max_new_tokens", "8"])
    assert metrics["use_adapter"] and metrics["n_samples"] == 2


def test_a_missing_recipe_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="recipe not found"):
        train.main(["--dry-run", str(tmp_path / "none.yaml")])


def test_stage_4_records_the_adapter_it_wrote_and_stage_5_evaluates_it(tmp_path):
    """The adapter a user trains is the one their table reports: stage 4 records it as ADAPTER_PATH in
    paths.env, and eval.sh (so scripts/5_evaluate.sh) takes it from there, saying where from."""
    cli = tmp_path / "llamafactory-cli"  # writes an adapter where the recipe says, as LLaMA-Factory does
    cli.write_text("#!/usr/bin/env bash\nfor a in \"$@\"; do case $a in output_dir=*) d=${a#output_dir=};; esac; done\n"
                   "mkdir -p \"$d\" && echo '{}' > \"$d/adapter_config.json\"\n")
    cli.chmod(0o755)
    paths_env = tmp_path / "models" / "paths.env"
    paths_env.parent.mkdir()
    paths_env.write_text("RELEASED_ADAPTER_PATH=/somewhere/released/TokenSkip-Qwen2.5-7B-Instruct-GSM8K\n")
    adapter = tmp_path / "outputs" / "adapters" / "mine"
    env = {**os.environ, "PATHS_ENV": str(paths_env)}
    result = subprocess.run([sys.executable, "-m", "tokenskip.stages.train", "--llamafactory-cli", str(cli),
                             str(CPU_RECIPE), f"output_dir={adapter}"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"recorded as ADAPTER_PATH in {paths_env}" in result.stdout
    recorded = paths_env.read_text()
    assert f"ADAPTER_PATH={adapter.resolve()}" in recorded.splitlines() and "RELEASED_ADAPTER_PATH=" in recorded
    fake_python = tmp_path / "python"  # prints the command eval.sh would run
    fake_python.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c 'import sys; print(sys.argv[1:])' \"$@\"\n")
    fake_python.chmod(0o755)
    result = subprocess.run(["bash", "scripts/5_evaluate.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake_python), "PATHS_ENV": str(paths_env)})
    assert result.returncode == 0, result.stderr
    assert f"'--adapter-path', '{adapter.resolve()}'" in result.stdout
    assert f"adapter {adapter.resolve()} (from {paths_env}, where stage 4 recorded it)" in result.stderr

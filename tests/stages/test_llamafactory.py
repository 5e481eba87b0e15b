"""get_llamafactory_input.py: the exact training records, id alignment, registration, bad input, and
agreement between the prompt LLaMA-Factory trains on and the prompt evaluation.py builds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from stage_files import QUESTIONS, convert, lf_checkout, make_run

from tokenskip.core.errors import UsageError
from tokenskip.prompting.prompts import build_prompt
from tokenskip.stages import llamafactory

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def test_records_are_pinned_for_qwen(tmp_path):
    records = convert(make_run(tmp_path), "--mix", "all")
    by_input = {r["input"]: r for r in records}
    assert len(records) == 6 and all(r["instruction"] == INSTRUCTION and set(r) == {"instruction", "input", "output"}
                                     for r in records)
    assert by_input["Tom has 3 apples and buys 4. How many?"]["output"] == (
        "Tom has 3 + 4 = 7 apples.\n\nThe final answer is: $\\boxed{7}$")
    assert by_input["Tom has 3 apples and buys 4. How many?<|eot_id|>0.9<|eot_id|>"]["output"] == (
        "Tom 3 + 4 = 7 apples.\n\nThe final answer is: $\\boxed{7}$")
    assert by_input["What is 10 / 4?<|eot_id|>0.5<|eot_id|>"]["output"] == (
        "10/4 = 2.5\n\nThe final answer is: $\\boxed{\\frac{5}{2}}$")


def test_records_are_pinned_for_llama3(tmp_path):
    records = convert(make_run(tmp_path), "--mix", "all", "--model-type", "llama3")
    inputs = sorted(r["input"] for r in records if r["input"].startswith("Tom"))
    # llama3's inference prompt has a newline after the question (the original's training data did not)
    assert inputs == ["Tom has 3 apples and buys 4. How many?\n",
                      "Tom has 3 apples and buys 4. How many?\n<|eot_id|>0.5<|eot_id|>",
                      "Tom has 3 apples and buys 4. How many?\n<|eot_id|>0.9<|eot_id|>"]
    # γ = 1.0 uses the extracted CoT, so the final-answer sentence is not repeated
    full = next(r for r in records if r["input"] == inputs[0])
    assert full["output"].count("The final answer is") == 1


def test_sample_mix_draws_one_ratio_per_question_like_the_original(tmp_path):
    import random

    records = convert(make_run(tmp_path))
    assert len(records) == 2
    rng = random.Random(42)  # the original: seed_everything(42); random.choice(...) per question
    expected_tags = [[1.0, 0.9, 0.5][rng.choice(range(3))] for _ in QUESTIONS]
    tags = []
    for question, _ in QUESTIONS.values():
        record = next(r for r in records if r["input"].startswith(question))
        match = re.search(r"<\|eot_id\|>([\d.]+)<\|eot_id\|>", record["input"])
        tags.append(float(match.group(1)) if match else 1.0)
    assert tags == expected_tags


def test_records_are_aligned_by_id_not_by_line(tmp_path):
    records = convert(make_run(tmp_path, order=("q-1", "q-0")), "--mix", "all")
    tagged = {r["input"]: r["output"] for r in records}
    assert tagged["What is 10 / 4?<|eot_id|>0.5<|eot_id|>"].startswith("10/4 = 2.5")


def test_mismatched_ids_are_reported(tmp_path):
    with pytest.raises(UsageError, match=r"1 ids missing \(e.g. q-1\)"):
        convert(make_run(tmp_path, drop="q-1"))


def test_missing_ratio_file_names_the_stage(tmp_path):
    make_run(tmp_path)
    with pytest.raises(UsageError, match="ratio_0.7.jsonl is missing: run LLMLingua.py"):
        llamafactory.main(["--input-dir", str(tmp_path), "--ratios", "0.7", "--output-file", str(tmp_path / "o.json")])


def test_unknown_method(tmp_path):
    with pytest.raises(UsageError, match="unknown compression method 'magic'"):
        llamafactory.main(["--input-dir", str(tmp_path), "--method", "magic"])


def test_registration_merges_keeps_a_backup_and_is_idempotent(tmp_path):
    checkout = lf_checkout(tmp_path, json.dumps({"alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}))
    run = make_run(tmp_path / "run")
    convert(run, "--llamafactory-dir", str(checkout))
    info = json.loads((checkout / "data" / "dataset_info.json").read_text())
    assert info["train"] == {"file_name": "train.json", "columns": llamafactory.DATASET_COLUMNS}
    assert "alpaca_en_demo" in info
    assert json.loads((checkout / "data" / "dataset_info.json.bak").read_text()) == {
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"}}
    assert (checkout / "data" / "train.json").read_bytes() == (run / "train.json").read_bytes()
    before = (checkout / "data" / "dataset_info.json").stat().st_mtime_ns
    assert llamafactory.register_dataset(checkout, "train.json") == ("train", False)
    assert (checkout / "data" / "dataset_info.json").stat().st_mtime_ns == before


def test_malformed_registry_is_refused_untouched(tmp_path):
    checkout = lf_checkout(tmp_path, '{"broken": ')
    with pytest.raises(UsageError, match="dataset_info.json:1: not valid JSON"):
        convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout))
    assert (checkout / "data" / "dataset_info.json").read_text() == '{"broken": '


def test_not_a_checkout_is_refused_before_writing(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(UsageError, match="not a LLaMA-Factory checkout"):
        convert(run, "--llamafactory-dir", str(tmp_path / "nowhere"))
    assert not (run / "train.json").exists()


@pytest.mark.parametrize("script, args, message", [
    ("get_llamafactory_input.py", ["--input-dir", "{tmp}/none"], "predictions_formatted.jsonl"),
    ("copy_to_llamafactory.py", ["--llamafactory-dir", "{tmp}/none"], "not a LLaMA-Factory checkout"),
    ("register_dataset.py", ["--llamafactory-dir", "{tmp}/none"], "not a LLaMA-Factory checkout"),
])
def test_cli_errors_are_one_line(tmp_path, script, args, message):
    result = subprocess.run([sys.executable, script, *[a.format(tmp=tmp_path) for a in args]], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_copy_and_register_scripts_work_together(tmp_path):
    checkout = lf_checkout(tmp_path, None)
    source = tmp_path / "outputs" / "mydataset_compressed_gsm8k_llmlingua2_qwen_7B.json"
    source.parent.mkdir()
    source.write_text("[]")
    for script in ("copy_to_llamafactory.py", "register_dataset.py"):
        result = subprocess.run([sys.executable, str(ROOT / script), "--llamafactory-dir", str(checkout)],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    info = json.loads((checkout / "data" / "dataset_info.json").read_text())
    assert info["mydataset_compressed_gsm8k_llmlingua2_qwen_7B"]["file_name"] == source.name


# --- the prompt LLaMA-Factory trains on == the prompt evaluation.py builds ---------------------------------------

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def llama3_tokenizer_dir(tmp_path_factory, smollm2_dir) -> Path:
    """SmolLM2's BPE with Llama-3's special tokens, bos and eos: enough to exercise the llama3 template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIALS})
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    folder = tmp_path_factory.mktemp("llama3-tokenizer")
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text((smollm2_dir / "config.json").read_text())
    return folder


def llamafactory_prompt_ids(recipe: Path, model_dir: Path, record: dict, tmp_path: Path) -> list[int]:
    """The prompt token ids LLaMA-Factory's own data pipeline builds for `record` under `recipe`."""
    import yaml
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "one.json").write_text(json.dumps([record]))
    (data_dir / "dataset_info.json").write_text(json.dumps(
        {"one": {"file_name": "one.json", "columns": llamafactory.DATASET_COLUMNS}}))
    args = {key: value for key, value in yaml.safe_load(recipe.read_text()).items()
            if key not in ("eval_strategy", "eval_steps", "per_device_eval_batch_size", "val_size", "deepspeed")}
    args.update(model_name_or_path=str(model_dir), dataset="one", dataset_dir=str(data_dir),
                output_dir=str(tmp_path / "out"), preprocessing_num_workers=None, bf16=False, report_to="none")
    model_args, data_args, training_args, *_ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    example = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)[
        "train_dataset"][0]
    return [token for token, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]


RECIPES = ROOT / "configs" / "examples" / "train_lora"


def recipe_template(recipe: Path) -> str:
    import yaml

    return yaml.safe_load(recipe.read_text())["template"]


def recipe_model_type(recipe: Path) -> str:
    return {"qwen": "qwen", "llama3": "llama3"}[recipe_template(recipe)]


# recipes for TokenSkip's fixed prompts; those of chat-template models are checked in test_chat_models.py
@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")
                                          if recipe_template(p) in ("qwen", "llama3")))
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_trained_prompt_equals_inference_prompt(recipe, ratio, smollm2_dir, llama3_tokenizer_dir, tmp_path,
                                                monkeypatch):
    """Every shipped recipe, rendered by LLaMA-Factory's own code, trains on evaluation.py's prompt."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_type = recipe_model_type(RECIPES / recipe)
    model_dir = smollm2_dir if model_type == "qwen" else llama3_tokenizer_dir
    question = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    record = llamafactory.training_record(question, "She sold 48 clips.", "48", ratio, model_type)
    trained = llamafactory_prompt_ids(RECIPES / recipe, model_dir, record, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = build_prompt(question, model_type=model_type, ratio=ratio, bos=tokenizer.bos_token,
                          eos=tokenizer.eos_token)
    assert trained == tokenizer(prompt, add_special_tokens=False).input_ids, (
        tokenizer.decode(trained), prompt)


ORIGINAL_RECIPE = {"stage": "sft", "finetuning_type": "lora", "lora_target": "all", "lora_rank": 8, "lora_alpha": 16,
                   "cutoff_len": 2048, "max_samples": 10000, "per_device_train_batch_size": 1,
                   "gradient_accumulation_steps": 8, "learning_rate": 5.0e-5, "num_train_epochs": 3.0,
                   "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True, "val_size": 0.1,
                   "eval_steps": 300, "save_steps": 300}


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("myllama3_*.yaml")))
def test_gpu_recipes_keep_the_original_hyperparameters(recipe):
    import yaml

    config = yaml.safe_load((RECIPES / recipe).read_text())
    assert {key: config.get(key) for key in ORIGINAL_RECIPE} == ORIGINAL_RECIPE
    assert (ROOT / config["model_name_or_path"]).parent.name == "models"
    if "deepspeed" in config:
        assert (ROOT / config["deepspeed"]).is_file()

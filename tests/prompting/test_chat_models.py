"""Any chat model and thinking models: prompts from the tokenizer's own chat template, `<think>` outputs
through stages 1-3, and LLaMA-Factory training on exactly the prompt evaluation.py builds.

No real thinking model exists offline, so tiny random-weight models carry the real chat templates of
Qwen3 and DeepSeek-R1-Distill-Qwen (tests/chat_templates/) and SmolLM2's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from testkit.tiny_models import save_tiny_llama
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.prompting import templates, thinking
from tokenskip.prompting.prompts import INSTRUCTION, build_prompt
from tokenskip.stages import evaluate, llamafactory

TEMPLATES = ROOT / "tests" / "chat_templates"
QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
R1_SPECIALS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
               "additional_special_tokens": ["<｜User｜>", "<｜Assistant｜>"]}


def build_tiny_chat_model(folder: Path, smollm2_dir: Path, template: str | None, specials: dict | None = None) -> Path:
    """A 2-layer random Llama with SmolLM2's BPE, `<think>`/`</think>` as ordinary added tokens (as Qwen3
    and R1 ship them), the given special tokens, and `template` as its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens([thinking.OPEN, thinking.CLOSE])
    if specials:
        tokenizer.add_special_tokens(specials)
        tokenizer.pad_token = specials["eos_token"]
    tokenizer.chat_template = template
    return save_tiny_llama(folder, tokenizer)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory, smollm2_dir) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-qwen3"), smollm2_dir,
                                 (TEMPLATES / "qwen3.jinja").read_text())


@pytest.fixture(scope="module")
def r1_dir(tmp_path_factory, smollm2_dir) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-r1"), smollm2_dir,
                                 (TEMPLATES / "deepseek_r1_distill_qwen.jinja").read_text(), R1_SPECIALS)


@pytest.fixture(scope="module")
def no_template_dir(tmp_path_factory, smollm2_dir) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-plain"), smollm2_dir, None)


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# ------------------------------------------------------------------ thinking outputs, from their text


@pytest.mark.parametrize("output, prompt, expected", [
    ("<think>\nAdd them.\n</think>\n\nThe answer is $\\boxed{72}$.", "",
     ("Add them.", "\n\nThe answer is $\\boxed{72}$.", True)),
    # the template opened <think> in the prompt (R1): the output starts inside the thinking
    ("Add them.\n</think>\n\n**72**", "<｜Assistant｜><think>\n", ("Add them.", "\n\n**72**", True)),
    # only the first </think> closes the thinking; the answer section is kept verbatim
    ("<think>a</think>b </think> c", "", ("a", "b </think> c", True)),
    # ran out of tokens inside the thinking: no answer
    ("<think>\nLet me count 48 and", "", ("Let me count 48 and", "", False)),
    ("Let me count 48 and", "<|im_start|>assistant\n<think>\n", ("Let me count 48 and", "", False)),
])
def test_thinking_outputs_split_into_thinking_and_answer(output, prompt, expected):
    split = thinking.split_output(output, prompt)
    assert (split.thinking, split.answer, split.finished) == expected


def test_plain_outputs_are_not_thinking_outputs():
    split = thinking.split_output("48 + 24 = 72. The answer is \\boxed{72}.", "<|im_start|>assistant\n")
    assert not split.is_thinking and split.answer.startswith("48 + 24")


# ------------------------------------------------------------------ families, from the chat template


def test_families_are_recognised_from_the_chat_template_not_the_architecture(qwen3_dir, r1_dir, smollm2_dir):
    # all three tiny models are Llama architectures; only their templates differ
    assert templates.resolve_model_type("auto", tokenizer_of(qwen3_dir)) == ("chat", "qwen3")
    assert templates.resolve_model_type("auto", tokenizer_of(r1_dir)) == ("chat", "deepseek-r1")
    assert templates.resolve_model_type("auto", tokenizer_of(smollm2_dir)) == ("chat", "smollm2")
    qwen25 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
              "<|im_end|>\\n' }}"
              "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    llama3 = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
              "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}")
    assert templates.family_of(qwen25).model_type == "qwen"
    assert templates.family_of(llama3).model_type == "llama3"
    assert templates.family_of("{{ messages[0]['content'] }}") is templates.GENERIC


def test_a_model_without_chat_template_names_the_flag(no_template_dir):
    with pytest.raises(UsageError, match="--model-type qwen or --model-type llama3"):
        templates.resolve_model_type("auto", tokenizer_of(no_template_dir))
    assert templates.resolve_model_type("qwen", tokenizer_of(no_template_dir))[0] == "qwen"


# ------------------------------------------------------------------ stage 1 on chat and thinking models


def run_stage1(model_dir: Path, tmp_path: Path, *extra: str, ratios=("1.0", "0.5"), max_new_tokens="4") -> list[dict]:
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": f"x #### {a}"}) + "\n"
                            for q, a in [(QUESTION, 72), ("What is 2 + 3?", 5)]))
    return evaluate.main(["--model-path", str(model_dir), "--data-path", str(data), "--output-dir",
                          str(tmp_path / "out"), "--model-size", "t", "--max_new_tokens", max_new_tokens,
                          "--compression_ratio", *ratios, "--device", "cpu", *extra])


def records_of(tmp_path: Path, ratio: float, data_type: str = "test") -> list[dict]:
    folder = layout.run_dir(layout.model_dir(tmp_path / "out", "t"), method="original" if ratio == 1.0 else "ratio-tag",
                            ratio=ratio, data_type=data_type)
    return [json.loads(line) for line in (layout.samples_dir(folder) / layout.PREDICTIONS).read_text().splitlines()]


def test_auto_builds_the_chat_template_prompt_with_the_ratio_tag(qwen3_dir, tmp_path):
    metrics = run_stage1(qwen3_dir, tmp_path)
    assert [m["model_type"] for m in metrics] == ["chat", "chat"] and metrics[0]["chat_family"] == "qwen3"
    tokenizer = tokenizer_of(qwen3_dir)
    for ratio, tag in [(1.0, ""), (0.5, "<|eot_id|>0.5<|eot_id|>")]:
        for record in records_of(tmp_path, ratio):
            user = f"{INSTRUCTION}\n{record['messages'][0]['content']}{tag}"
            expected = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                     add_generation_prompt=True)
            assert record["prompt"] == expected
            assert expected == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"  # no system turn


def test_qwen3_thinking_switch_and_system_message(qwen3_dir, tmp_path):
    run_stage1(qwen3_dir, tmp_path, "--thinking", "off", "--system", "Be brief.", ratios=("1.0",))
    [first, *_] = records_of(tmp_path, 1.0)
    assert first["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert first["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    settings = json.loads((records_path(tmp_path) / layout.RUN_SETTINGS).read_text())
    assert (settings["system"], settings["thinking"], settings["model_type"]) == ("Be brief.", "off", "chat")


def records_path(tmp_path: Path) -> Path:
    return layout.samples_dir(layout.run_dir(layout.model_dir(tmp_path / "out", "t"), method="original", ratio=1.0,
                                             data_type="test"))


def test_output_cut_off_inside_the_thinking_has_no_answer(r1_dir, tmp_path):
    """R1's template opens <think> in the prompt; 4 random tokens never close it: no answer, counted."""
    [metrics] = run_stage1(r1_dir, tmp_path, ratios=("1.0",))
    records = records_of(tmp_path, 1.0)
    assert all(r["prompt"].endswith("<｜Assistant｜><think>\n") for r in records)
    assert all(r["thinking_finished"] is False and r["prediction"] == "" and r["grades"] == {} for r in records)
    assert all(r["cot_length"] == r["thinking_tokens"] and r["answer_tokens"] == 0 for r in records)
    assert metrics["thinking"]["n"] == 2 and metrics["thinking"]["n_unfinished"] == 2
    assert metrics["accuracy"] == 0.0
    # the report shows thinking and answer tokens apart, and the outputs cut off inside <think>
    from tokenskip.stages import report

    [table] = report.main([str(tmp_path / "out")])
    assert table.rows[0].thinking == metrics["thinking"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "### Thinking and answer" in text and "| 2 of 2 |" in text


@pytest.mark.parametrize("flags, message", [
    (["--model-type", "qwen", "--system", "x"], "--system applies to chat prompts only"),
    (["--model-type", "qwen", "--thinking", "on"], "--thinking on applies to chat prompts only"),
])
def test_chat_only_flags_on_fixed_prompts_are_refused(qwen3_dir, tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        run_stage1(qwen3_dir, tmp_path, *flags, ratios=("1.0",))


def test_legacy_prompts_are_unchanged_by_explicit_model_type(qwen3_dir, tmp_path):
    run_stage1(qwen3_dir, tmp_path, "--model-type", "qwen", ratios=("0.5",))
    [first, *_] = records_of(tmp_path, 0.5)
    assert first["prompt"] == build_prompt(first["messages"][0]["content"], model_type="qwen", ratio=0.5)


# ------------------------------------------------------------------ a thinking CoT through stages 2 and 3

THINKING = ("Natalia sold 48 clips in April. In May she sold half as many, which is 48 / 2 = 24 clips. "
            "Altogether she sold 48 + 24 = 72 clips, so the total is 72.")
ANSWER_SECTION = "\n\nShe sold **72** clips in total.\n\n$\\boxed{72}$"


def write_thinking_stage1(model_dir: Path, tokenizer_dir: Path, prompt_opens_thinking: bool) -> None:
    samples = layout.original_samples(model_dir, "train")
    samples.mkdir(parents=True)
    prompt = "<｜User｜>q<｜Assistant｜><think>\n" if prompt_opens_thinking else "<|im_start|>assistant\n"
    opening = "" if prompt_opens_thinking else "<think>\n"
    records = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"{QUESTION} ({i})"},
                                            {"role": "assistant", "content": ""}],
                "answer": "72", "prompt": prompt, "model_output": f"{opening}{THINKING}\n</think>{ANSWER_SECTION}",
                "prediction": "72", "accuracy": True} for i in range(3)]
    (samples / layout.PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / layout.METRICS).write_text(json.dumps({"model_path": str(tokenizer_dir), "model_type": "chat",
                                                      "chat_family": "deepseek-r1"}))


@pytest.mark.parametrize("prompt_opens_thinking", [True, False])
def test_thinking_is_compressed_and_the_answer_section_kept_verbatim(r1_dir, tiny_lm_dir, tmp_path,
                                                                      prompt_opens_thinking):
    from tokenskip.stages import cts as cts_stage

    model_dir = tmp_path / "out" / "t"
    write_thinking_stage1(model_dir, r1_dir, prompt_opens_thinking)
    predictions = layout.original_samples(model_dir, "train") / layout.PREDICTIONS
    summary = cts_stage.main(["--input_data", str(predictions), "--reference_model", str(tiny_lm_dir),
                              "--ratios", "0.5", "--device", "cpu"])
    assert summary["n_compressed"] == 3
    [line, *_] = compressed_lines(model_dir)
    assert line["cot"] == THINKING and line["answer_section"] == ANSWER_SECTION
    kept = line["compressed_cot"].split()
    assert 0 < len(kept) < len(THINKING.split()) and "**72**" not in line["compressed_cot"]

    output = tmp_path / "train.json"
    llamafactory.main(["--input-dir", str(model_dir), "--method", "cts", "--ratios", "0.5", "--mix", "all",
                       "--output-file", str(output)])
    records = json.loads(output.read_text())
    by_input = {r["input"]: r for r in records}
    compressed = by_input[f"{line['question']}<|eot_id|>0.5<|eot_id|>"]
    assert compressed["output"] == f"<think>\n{line['compressed_cot']}\n</think>{ANSWER_SECTION}"
    full = by_input[line["question"]]
    assert full["output"] == f"<think>\n{THINKING}\n</think>{ANSWER_SECTION}"
    assert "The final answer is" not in compressed["output"]


def compressed_lines(model_dir: Path) -> list[dict]:
    [path] = sorted(layout.compression_dir(model_dir, "cts").glob("*0.5*.jsonl"))
    return [json.loads(x) for x in path.read_text().splitlines()]


# ------------------------------------------------------------------ LLaMA-Factory trains on the inference prompt


def llamafactory_ids(args: dict, model_dir: Path, record: dict, tmp_path: Path) -> tuple[list[int], list[int]]:
    """(prompt ids, whole sequence ids) that LLaMA-Factory's own data pipeline builds for `record`."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "one.json").write_text(json.dumps([record]))
    (data_dir / "dataset_info.json").write_text(json.dumps(
        {"one": {"file_name": "one.json", "columns": llamafactory.dataset_columns(json.dumps([record]).encode())}}))
    args = {key: value for key, value in args.items()
            if key not in ("eval_strategy", "eval_steps", "per_device_eval_batch_size", "val_size", "deepspeed")}
    args.update(model_name_or_path=str(model_dir), dataset="one", dataset_dir=str(data_dir), stage="sft",
                do_train=True, finetuning_type="lora", output_dir=str(tmp_path / "lf-out"),
                preprocessing_num_workers=None, bf16=False, report_to="none", overwrite_cache=True)
    model_args, data_args, training_args, *_ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    example = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)[
        "train_dataset"][0]
    prompt = [token for token, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
    return prompt, list(example["input_ids"])


FAMILY_MODELS = {"qwen3": "qwen3_dir", "deepseek-r1": "r1_dir", "smollm2": "smollm2_dir"}


@pytest.mark.parametrize("family, switch", [("qwen3", None), ("qwen3", False), ("deepseek-r1", None),
                                            ("smollm2", None)])
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_chat_families_train_on_the_inference_prompt(family, switch, ratio, request, tmp_path, monkeypatch):
    """Stage 3's record, rendered by LLaMA-Factory with the family's template, starts with exactly the
    token ids evaluation.py prompts with (R1's prompt opens <think>, which the training target holds)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    model_dir = request.getfixturevalue(FAMILY_MODELS[family])
    tokenizer = tokenizer_of(model_dir)
    resolved = templates.resolve_model_type("auto", tokenizer)
    assert resolved == ("chat", family)
    spec = templates.family_named(family)
    thinks = switch is not False and family in ("qwen3", "deepseek-r1")
    record = llamafactory.training_record(QUESTION, "She sold 48 + 24 = 72 clips.", "72", ratio, "chat",
                                          answer_section="\n\nThe answer is $\\boxed{72}$." if thinks else None)
    args = {"template": spec.llamafactory_template, "cutoff_len": 1024,
            **({"default_system": spec.default_system} if spec.default_system else {}),
            **({"enable_thinking": switch} if switch is not None else {})}
    trained_prompt, sequence = llamafactory_ids(args, model_dir, record, tmp_path)
    prompt = build_prompt(QUESTION, model_type="chat", ratio=ratio, tokenizer=tokenizer, thinking=switch)
    inference = tokenizer(prompt, add_special_tokens=False).input_ids
    assert sequence[:len(inference)] == inference, (tokenizer.decode(sequence), prompt)
    assert inference[:len(trained_prompt)] == trained_prompt
    if not thinking.opens_thinking(prompt):
        assert trained_prompt == inference


RECIPE_DIRS = [ROOT / "configs" / "examples" / folder
               for folder in ("train_lora", "train_full")]
RECIPES = sorted(recipe for folder in RECIPE_DIRS for recipe in folder.glob("*.yaml"))


def recipe_args(recipe: Path) -> dict:
    import yaml

    return yaml.safe_load(recipe.read_text())


def chat_family_of_template(template: str) -> str | None:
    return next((f.name for f in templates.FAMILIES if f.model_type == "chat" and f.llamafactory_template == template
                 and f.name in FAMILY_MODELS), None)


def test_every_recipe_template_is_checked_somewhere():
    for recipe in RECIPES:
        template = recipe_args(recipe)["template"]
        assert template in ("qwen", "llama3") or chat_family_of_template(template), (recipe.name, template)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if recipe_args(r)["template"] not in ("qwen", "llama3")],
                         ids=lambda r: r.name)
def test_chat_recipes_train_on_the_inference_prompt(recipe, request, tmp_path, monkeypatch):
    """Every shipped recipe for a chat-template model, rendered by LLaMA-Factory, trains on evaluation.py's prompt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = recipe_args(recipe)
    family = chat_family_of_template(args["template"])
    model_dir = request.getfixturevalue(FAMILY_MODELS[family])
    tokenizer = tokenizer_of(model_dir)
    switch = args.get("enable_thinking")
    thinks = switch is not False and family in ("qwen3", "deepseek-r1")
    record = llamafactory.training_record(QUESTION, "48 + 24 = 72.", "72", 0.5, "chat",
                                          answer_section="\n\n$\\boxed{72}$" if thinks else None)
    keep = ("template", "default_system", "enable_thinking", "cutoff_len")
    trained_prompt, sequence = llamafactory_ids({k: v for k, v in args.items() if k in keep}, model_dir, record,
                                                tmp_path)
    prompt = build_prompt(QUESTION, model_type="chat", ratio=0.5, tokenizer=tokenizer,
                          thinking=None if switch is None or switch is True else False)
    inference = tokenizer(prompt, add_special_tokens=False).input_ids
    assert sequence[:len(inference)] == inference, (tokenizer.decode(sequence), prompt)
    if not thinking.opens_thinking(prompt):
        assert trained_prompt == inference


def test_nothinking_and_budget_forcing_on_a_thinking_model(r1_dir, tmp_path):
    """R1's template opens <think>; NoThinking closes it in the prompt (the model writes no thinking), and budget
    forcing ends the thinking at the budget with s1's delimiter, so that every output has an answer section."""
    from tokenskip.evaluation import baselines
    from tokenskip.prompting import prompts

    [original] = run_stage1(r1_dir, tmp_path, ratios=("1.0",), max_new_tokens="8")
    assert original["thinking"]["n_unfinished"] == 2  # 8 random tokens never close the thinking
    [skipped] = run_stage1(r1_dir, tmp_path, "--baseline", "nothinking", ratios=("1.0",), max_new_tokens="8")
    folder = layout.samples_dir(layout.run_dir(layout.model_dir(tmp_path / "out", "t"), method="nothinking",
                                               ratio=1.0, data_type="test"))
    records = [json.loads(line) for line in (folder / layout.PREDICTIONS).read_text().splitlines()]
    assert all(r["prompt"].endswith("<｜Assistant｜><think>\n" + prompts.NO_THINKING_PREFILL) for r in records)
    # the original's outputs were all cut inside <think> (no answer); these all reached an answer and were graded
    assert all(r.get("thinking_finished", True) and r["grades"] for r in records)
    assert skipped.get("thinking", {}).get("n_unfinished", 0) == 0
    [forced] = run_stage1(r1_dir, tmp_path, "--baseline", "budget", ratios=("0.5",), max_new_tokens="8")
    folder = layout.samples_dir(layout.run_dir(layout.model_dir(tmp_path / "out", "t"), method="budget",
                                               ratio=0.5, data_type="test"))
    records = [json.loads(line) for line in (folder / layout.PREDICTIONS).read_text().splitlines()]
    budget = max(1, round(0.5 * original["avg_cot_length"]))
    assert json.loads((folder / layout.RUN_SETTINGS).read_text())["budget"] == budget
    assert all(r["forced"] == prompts.FORCED_THINKING_END and r["thinking_finished"] for r in records)
    assert all(r["output_tokens"] <= budget + baselines.FORCED_ANSWER_TOKENS for r in records)
    assert forced["thinking"]["n_unfinished"] == 0

"""--ratio-format token (opt-in; eot, TokenSkip's tag, stays the default): γ as one added token such as <COMP_50>,
the same in stage 3's training data and stage 5's prompts, the tokens trained by LLaMA-Factory and read back."""

from __future__ import annotations

import json

import pytest

from testkit.lf_adapters import train_adapter
from tokenskip.core.errors import UsageError
from tokenskip.prompting import prompts
from tokenskip.stages import evaluate, llamafactory

QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"


def test_the_default_stays_tokenskips_tag_and_token_puts_one_control_token_in_its_place():
    eot = prompts.build_prompt(QUESTION, model_type="qwen", ratio=0.5)
    assert f"{QUESTION}<|eot_id|>0.5<|eot_id|><|im_end|>" in eot
    token = prompts.build_prompt(QUESTION, model_type="qwen", ratio=0.5, ratio_format="token")
    assert token == eot.replace("<|eot_id|>0.5<|eot_id|>", "<COMP_50>")
    assert prompts.build_prompt(QUESTION, model_type="qwen", ratio=1.0, ratio_format="token") == \
        prompts.build_prompt(QUESTION, model_type="qwen", ratio=1.0)  # γ = 1.0 is untagged in both
    assert prompts.ratio_tokens([1.0, 0.9, 0.75, 0.5]) == ["<COMP_90>", "<COMP_75>", "<COMP_50>"]
    record = llamafactory.training_record(QUESTION, "48 clips.", "48", 0.7, "qwen", ratio_format="token")
    assert record["input"] == f"{QUESTION}<COMP_70>"
    assert llamafactory.token_format_overrides([0.9, 0.5]) == ["add_special_tokens=<COMP_90>,<COMP_50>",
                                                                "resize_vocab=true"]


@pytest.fixture(scope="module")
def token_adapter(tiny_lm_dir, tmp_path_factory):
    """A LoRA trained by llamafactory-cli on --ratio-format token records, the tokens added and trained."""
    out = tmp_path_factory.mktemp("token-adapter") / "adapter"
    return train_adapter(tiny_lm_dir, out, rank=4, steps=2, ratio_format="token",
                         extra=tuple(llamafactory.token_format_overrides([0.5])))


def test_llamafactory_trains_on_the_prompt_evaluation_builds_with_the_adapters_tokenizer(token_adapter, tiny_lm_dir,
                                                                                       tmp_path):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(token_adapter)  # saved by LLaMA-Factory with the added token
    assert len(tokenizer.tokenize("<COMP_50>")) == 1
    template = get_template_and_fix_tokenizer(
        tokenizer, DataArguments(template="qwen", default_system="You are a helpful assistant."))
    record = llamafactory.training_record(QUESTION, "48 clips.", "48", 0.5, "qwen", ratio_format="token")
    trained, _ = template.encode_oneturn(
        tokenizer, [{"role": "user", "content": record["instruction"] + "\n" + record["input"]},
                    {"role": "assistant", "content": record["output"]}], "You are a helpful assistant.")
    prompt = prompts.build_prompt(QUESTION, model_type="qwen", ratio=0.5, ratio_format="token")
    assert trained == tokenizer(prompt, add_special_tokens=False).input_ids
    assert tokenizer.convert_tokens_to_ids("<COMP_50>") in trained
    # the adapter saved the resized embeddings whole (modules_to_save)
    from tokenskip.models.loading import saved_embedding_rows

    base_rows = json.loads((tiny_lm_dir / "config.json").read_text())["vocab_size"]
    assert saved_embedding_rows(str(token_adapter)) > base_rows


def test_evaluation_reads_the_adapters_tokenizer_and_embeddings(token_adapter, tiny_lm_dir, tmp_path):
    from stage_files import cli_args

    args = [*cli_args(tiny_lm_dir, tmp_path / "out", "--max_num_examples", "2"), "--use_adapter",
            "--adapter-path", str(token_adapter), "--compression_ratio", "0.5", "--ratio-format", "token"]
    [metrics] = evaluate.main(args)
    assert metrics["n_samples"] == 2
    predictions = [json.loads(line) for line in (tmp_path / "out" / "tiny" / "TokenSkip" / "0.5" / "samples" /
                                                 "predictions.jsonl").read_text().splitlines()]
    assert all(record["prompt"].count("<COMP_50>") == 1 for record in predictions)
    run = json.loads((tmp_path / "out" / "tiny" / "TokenSkip" / "0.5" / "samples" / "run.json").read_text())
    assert run["ratio_format"] == "token"
    # the same folder under the other format is another run: refused, not mixed
    with pytest.raises(UsageError, match="ratio_format: 'token' -> 'eot'"):
        evaluate.main([*args[:-2], "--ratio-format", "eot"])


@pytest.mark.parametrize("extra, message", [
    (["--backend", "vllm"], "cannot load; use --backend hf"),
    ([], "has no <COMP_50>"),
])
def test_token_format_refusals_are_one_line(tiny_lm_dir, tiny_adapter, tmp_path, extra, message):
    from stage_files import cli_args

    args = [*cli_args(tiny_lm_dir, tmp_path / "out", "--max_num_examples", "2"), "--use_adapter",
            "--adapter-path", str(tiny_adapter), "--compression_ratio", "0.5", "--ratio-format", "token"]
    if extra:
        args[args.index("--backend") + 1] = extra[1]
    with pytest.raises(UsageError, match=message):
        evaluate.main(args)

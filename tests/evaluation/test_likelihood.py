"""The γ-probe (tokenskip/evaluation/likelihood.py): it scores exactly what LLaMA-Factory trains on,
batching does not change a score, and the matrix reading tells a learned γ from an ignored one."""

from __future__ import annotations

import math

import pytest

from tokenskip.evaluation.likelihood import HeldOutCoT, gamma_matrix, pair_texts, read_matrix, token_logliks
from tokenskip.stages.llamafactory import training_record

RATIOS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]


def target_of(cot: str, answer: str) -> str:
    return training_record("", cot, answer, 1.0, "qwen")["output"]


def items() -> list[HeldOutCoT]:
    return [
        HeldOutCoT("a", "Tom has 3 apples and buys 4 more. How many apples?", "7",
                   {r: " ".join(["3 + 4 = 7 apples"] + ["so Tom has them"] * round(10 * r)) for r in RATIOS}),
        HeldOutCoT("b", "A box holds 12 eggs. How many eggs are in 5 boxes?", "60",
                   {r: "12 * 5 = 60" + " eggs in all" * round(6 * r) for r in RATIOS}),
    ]


@pytest.mark.parametrize("ratio", [1.0, 0.7])
def test_a_cell_scores_the_tokens_llamafactory_trains_on(smollm2_dir, ratio):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    # the CPU recipe's template and system message
    template = get_template_and_fix_tokenizer(
        tokenizer, DataArguments(template="qwen", default_system="You are a helpful assistant."))
    item = items()[0]
    record = training_record(item.question, item.cots[0.5], item.answer, ratio, "qwen")
    prompt_ids, response_ids = template.encode_oneturn(
        tokenizer, [{"role": "user", "content": record["instruction"] + "\n" + record["input"]},
                    {"role": "assistant", "content": record["output"]}], "You are a helpful assistant.")
    prompt, target = pair_texts(item, 0.5, ratio, model_type="qwen", target_of=target_of)
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == prompt_ids
    # the target ends at the end-of-turn token; LLaMA-Factory also trains the newline after it
    ours = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ours == response_ids[:-1] and tokenizer.decode(response_ids[-1:]) == "\n"


def test_batching_and_padding_do_not_change_a_score(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    pairs = [pair_texts(item, d, p, model_type="qwen", target_of=target_of)
             for item in items() for d, p in ((1.0, 1.0), (0.5, 0.9), (0.6, 0.5))]
    batched = token_logliks(model, tokenizer, pairs, batch_size=4)
    for pair, (total, count) in zip(pairs, batched):
        (alone, alone_count), = token_logliks(model, tokenizer, [pair], batch_size=1)
        # by hand: one unpadded forward pass, log-softmax at the positions before each target token
        prompt = tokenizer(pair[0], add_special_tokens=False)["input_ids"]
        target = tokenizer(pair[1], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        by_hand = sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(target))
        assert count == alone_count == len(target)
        assert total == pytest.approx(alone, abs=1e-4) and total == pytest.approx(by_hand, abs=1e-4)


def test_the_matrix_has_a_cell_per_data_ratio_and_tag(tiny_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    matrix = gamma_matrix(model, tokenizer, items(), RATIOS, model_type="qwen", target_of=target_of)
    assert matrix["n_questions"] == 2 and matrix["ratios"] == RATIOS
    assert len(matrix["mean_loglik"]) == 6 and all(len(row) == 6 for row in matrix["mean_loglik"])
    assert all(value < 0 and math.isfinite(value) for row in matrix["mean_loglik"] for value in row)
    # a cell is the mean over questions of each target's mean per token
    pairs = [pair_texts(item, 0.8, 0.6, model_type="qwen", target_of=target_of) for item in items()]
    per_item = [total / count for total, count in token_logliks(model, tokenizer, pairs)]
    assert matrix["mean_loglik"][2][4] == pytest.approx(sum(per_item) / 2, abs=1e-5)
    # longer CoTs (row 1.0) have more target tokens than compressed ones (row 0.5)
    assert matrix["target_tokens"][0][0] > matrix["target_tokens"][5][0]


def test_the_reading_tells_a_learned_gamma_from_an_ignored_one():
    learned = [[-1.0 - 0.1 * abs(d - p) * 10 for p in RATIOS] for d in RATIOS]  # every row peaks at its own γ
    reading = read_matrix(learned, RATIOS)
    assert reading["compressed_rows_peaking_at_own_tag"] == 5 and reading["rows_peaking_at_own_gamma"] == 6
    assert reading["row_peaks"] == RATIOS and all(spread > 0 for spread in reading["tagged_spread"])
    # a tag is there or not, its value ignored: the tagged columns of each row are equal
    ignored = [[-1.2 if p == 1.0 else -1.0 for p in RATIOS] for _ in RATIOS]
    reading = read_matrix(ignored, RATIOS)
    assert reading["tagged_spread"] == [0.0] * 6
    assert reading["tag_minus_untagged"] == [pytest.approx(0.2)] * 6
    assert reading["compressed_rows_peaking_at_own_tag"] <= 1  # ties go to the first tagged column

"""The prompt strings are facts of the original code: released adapters were trained on them."""

import pytest

from tokenskip.core.ratios import ratio_tag
from tokenskip.prompting.prompts import build_prompt, cot_of

QUESTION = "Janet has 3 apples. How many?"
QWEN_HEAD = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             "Please reason step by step, and put your final answer within \\boxed{}.\n")
LLAMA_HEAD = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
              "Please reason step by step, and put your final answer within \\boxed{}.\n")
LLAMA_TOKENS = {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>"}


def test_qwen_without_ratio():
    assert build_prompt(QUESTION, model_type="qwen") == (
        QWEN_HEAD + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_with_ratio_tag():
    assert build_prompt(QUESTION, model_type="qwen", ratio=0.5) == (
        QWEN_HEAD + QUESTION + "<|eot_id|>0.5<|eot_id|><|im_end|>\n<|im_start|>assistant\n")


def test_llama3_without_ratio():
    assert build_prompt(QUESTION, model_type="llama3", **LLAMA_TOKENS) == (
        LLAMA_HEAD + QUESTION + "\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama3_with_ratio_tag():
    assert build_prompt(QUESTION, model_type="llama3", ratio=0.7, **LLAMA_TOKENS) == (
        LLAMA_HEAD + QUESTION + "\n<|eot_id|>0.7<|eot_id|><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("ratio, tag", [(0.5, "0.5"), (0.9, "0.9"), (0.6, "0.6"), (1, "1.0")])
def test_ratio_is_python_str_of_float(ratio, tag):
    assert ratio_tag(ratio) == tag


def test_unknown_model_type_is_rejected():
    with pytest.raises(ValueError, match="unknown model type"):
        build_prompt(QUESTION, model_type="mistral")


def test_cot_stops_at_final_answer_marker():
    output = "Step 1: 2+2=4.\n\nThe final answer is: $\\boxed{4}$"
    assert cot_of(output) == "Step 1: 2+2=4."
    assert cot_of("no marker here") == "no marker here"


def test_prompt_based_reduction_request():
    from tokenskip.prompting.prompts import reduction_request

    assert reduction_request(0.5) == "Please reduce 50% of the words in your Chain-of-Thought process."
    assert reduction_request(0.9) == "Please reduce 10% of the words in your Chain-of-Thought process."
    assert build_prompt(QUESTION, model_type="qwen", request=reduction_request(0.6)) == (
        QWEN_HEAD + QUESTION
        + "\nPlease reduce 40% of the words in your Chain-of-Thought process.<|im_end|>\n<|im_start|>assistant\n")

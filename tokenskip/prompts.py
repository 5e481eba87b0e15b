"""Prompt strings, exactly as TokenSkip wrote them, so that its released adapters keep working.

The adapters were trained on prompts in which the compression ratio γ sits between two
`<|eot_id|>` markers after the question; a single character of difference changes what the
model sees. The ratio is rendered with Python's `str(float)` (`0.5`, `0.9`), as the original.
"""

from __future__ import annotations

MODEL_TYPES = ("qwen", "llama3")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_SYSTEM = "You are a helpful assistant."
# What the model writes after its reasoning; the CoT is everything before it.
ANSWER_MARKER = "\n\nThe final answer is:"
# The prompt-based baseline of the paper: ask the base model itself to reason with fewer words.
REDUCTION_REQUEST = "Please reduce {percent}% of the words in your reasoning."


def reduction_request(ratio: float) -> str:
    return REDUCTION_REQUEST.format(percent=round((1.0 - ratio) * 100))


def ratio_tag(ratio: float) -> str:
    return str(float(ratio))


def user_content(question: str, ratio: float, model_type: str, eos: str = "", request: str = "") -> str:
    """The user turn's text: instruction, question and, when γ < 1, the ratio tag.

    `request` (the prompt-based baseline's instruction) replaces the ratio tag: the base model
    was never trained on the tag, so it is asked in words instead.
    """
    if request:
        separator = "" if model_type == "qwen" else "\n"
        return f"{INSTRUCTION}\n{question}\n{request}{separator}"
    if model_type == "qwen":
        tag = f"<|eot_id|>{ratio_tag(ratio)}<|eot_id|>" if ratio < 1.0 else ""
        return f"{INSTRUCTION}\n{question}{tag}"
    if model_type == "llama3":
        tag = f"{eos}{ratio_tag(ratio)}{eos}" if ratio < 1.0 else ""
        return f"{INSTRUCTION}\n{question}\n{tag}"
    raise ValueError(f"unknown model type {model_type!r}; expected one of {MODEL_TYPES}")


def build_prompt(question: str, *, model_type: str, ratio: float = 1.0, bos: str = "", eos: str = "",
                 request: str = "") -> str:
    """The full generation prompt; `bos`/`eos` are the tokenizer's (needed for llama3 only)."""
    if model_type == "qwen":
        return (
            f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{user_content(question, ratio, model_type, request=request)}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
    if model_type == "llama3":
        return (
            f"{bos}<|start_header_id|>user<|end_header_id|>\n\n"
            f"{user_content(question, ratio, model_type, eos, request)}{eos}"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    raise ValueError(f"unknown model type {model_type!r}; expected one of {MODEL_TYPES}")


def cot_of(model_output: str) -> str:
    """The chain of thought: the output before the final-answer marker, when there is one."""
    return model_output.split(ANSWER_MARKER)[0]

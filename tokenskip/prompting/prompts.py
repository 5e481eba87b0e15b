"""Prompt strings, exactly as TokenSkip wrote them, so that its released adapters keep working.

The adapters were trained on prompts in which the compression ratio γ sits between two
`<|eot_id|>` markers after the question; a single character of difference changes what the
model sees. The ratio is rendered with Python's `str(float)` (`0.5`, `0.9`), as the original.
"""

from __future__ import annotations

from pathlib import Path

from tokenskip.core.ratios import ratio_tag

# how a prompt is built: TokenSkip's two fixed prompts, or the model's own chat template
PROMPT_FORMATS = ("qwen", "llama3", "chat")
# what --model-type accepts: auto picks one of PROMPT_FORMATS from the chat template (tokenskip/prompting/templates.py)
MODEL_TYPES = ("auto", *PROMPT_FORMATS)
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_SYSTEM = "You are a helpful assistant."
# What the model writes after its reasoning; the CoT is everything before it.
ANSWER_MARKER = "\n\nThe final answer is:"
# The marker and the opening of the boxed answer TokenSkip's training targets end with: text that, appended to a
# CoT, makes the model write its answer at once (soft compression's answer cue, budget forcing's forced end)
BOXED_CUE = ANSWER_MARKER + " $\\boxed{"
# How γ is written into the prompt. eot (the default): TokenSkip's `<|eot_id|>γ<|eot_id|>`, which the released
# adapters learned; the tokenizer reads γ as plain digits. token: one added vocabulary token per γ,
# `<COMP_50>` (Extra-CoT's control tokens, arXiv 2602.08324), which training must add to the tokenizer
# and learn (LLaMA-Factory: add_special_tokens + resize_vocab; stage 3 prints the overrides).
RATIO_FORMATS = ("eot", "token")
RATIO_TOKEN = "<COMP_{percent}>"


def ratio_token(ratio: float) -> str:
    return RATIO_TOKEN.format(percent=round(ratio * 100))


def ratio_tokens(ratios) -> list[str]:
    """The added tokens of --ratio-format token for these γ (1.0 stays untagged, as in TokenSkip)."""
    return [ratio_token(ratio) for ratio in ratios if ratio < 1.0]


# The prompt-based baseline of the paper (LC-Prompt): ask the base model itself to reason with fewer words,
# in the words the paper's Table 3 quotes for γ = 0.5: "Please reduce 50% of the words in your Chain-of-Thought
# process." (the percentage is (1 - γ) x 100 at the other γ).
REDUCTION_REQUEST = "Please reduce {percent}% of the words in your Chain-of-Thought process."


def reduction_request(ratio: float) -> str:
    return REDUCTION_REQUEST.format(percent=round((1.0 - ratio) * 100))


# The training-free baselines beyond the paper's two (evaluation.py --baseline; tokenskip/evaluation/baselines.py).
# Chain-of-Draft (Xu et al., arXiv 2502.18600), its system prompt's drafting sentence, verbatim. Its second
# sentence ("Return the answer at the end of the response after a separator ####.") is left out: the answer
# format stays INSTRUCTION's \boxed{}, which every method here is graded on alike.
DRAFT_REQUEST = "Think step by step, but only keep a minimum draft for each thinking step, with 5 words at most."
# TALE-EP's token-budget prompt (Han et al., arXiv 2412.18547, its Table 1), after the question as in its code;
# the budget is γ x the base model's mean CoT tokens, as the truncation baseline's.
BUDGET_REQUEST = "Let's think step by step and use less than {budget} tokens:"
# NoThinking (Ma et al., arXiv 2504.09858): the thinking block prefilled as finished, the text its code appends
# to the chat-templated prompt (which, for R1-style templates, has already opened <think>).
NO_THINKING_PREFILL = "Okay, I think I have finished thinking.\n</think>"
# Budget forcing (Muennighoff et al., s1, arXiv 2501.19393): at the budget the thinking is ended by "appending
# the end-of-thinking token delimiter and optionally 'Final Answer:'". A thinking model gets exactly that; other
# models end their CoT at ANSWER_MARKER (what TokenSkip's CoTs end with), so the forced text is BOXED_CUE.
FORCED_THINKING_END = "\n</think>\n\nFinal Answer:"


def budget_request(budget: int) -> str:
    return BUDGET_REQUEST.format(budget=budget)


def user_content(question: str, ratio: float, model_type: str, eos: str = "", request: str = "",
                 ratio_format: str = "eot") -> str:
    """The user turn's text: instruction, question and, when γ < 1, the ratio tag.

    `request` (the prompt-based baseline's instruction) replaces the ratio tag: the base model
    was never trained on the tag, so it is asked in words instead. `ratio_format` token puts the
    γ's control token where the eot format puts its tag.
    """
    if ratio_format not in RATIO_FORMATS:
        raise ValueError(f"unknown ratio format {ratio_format!r}; expected one of {RATIO_FORMATS}")
    if request:
        separator = "\n" if model_type == "llama3" else ""
        return f"{INSTRUCTION}\n{question}\n{request}{separator}"
    if model_type in ("qwen", "chat"):
        # chat models get the tag the released adapters learned, literally, right after the question
        tag = "" if ratio >= 1.0 else (ratio_token(ratio) if ratio_format == "token"
                                       else f"<|eot_id|>{ratio_tag(ratio)}<|eot_id|>")
        return f"{INSTRUCTION}\n{question}{tag}"
    if model_type == "llama3":
        tag = "" if ratio >= 1.0 else (ratio_token(ratio) if ratio_format == "token"
                                       else f"{eos}{ratio_tag(ratio)}{eos}")
        return f"{INSTRUCTION}\n{question}\n{tag}"
    raise ValueError(f"unknown model type {model_type!r}; expected one of {PROMPT_FORMATS}")


def build_prompt(question: str, *, model_type: str, ratio: float = 1.0, bos: str = "", eos: str = "",
                 request: str = "", tokenizer=None, system: str | None = None, thinking: bool | None = None,
                 ratio_format: str = "eot") -> str:
    """The full generation prompt; `bos`/`eos` are the tokenizer's (needed for llama3 only).

    `chat`: the tokenizer's own chat template renders one user turn (and a system turn only when
    `system` is given); `thinking` is passed to templates with a thinking switch (Qwen3's
    `enable_thinking`), None leaves the template's default.
    """
    if model_type == "chat":
        if tokenizer is None:
            raise ValueError("the chat prompt format needs the tokenizer")
        messages = [{"role": "system", "content": system}] if system else []
        content = user_content(question, ratio, model_type, request=request, ratio_format=ratio_format)
        messages.append({"role": "user", "content": content})
        switches = {} if thinking is None else {"enable_thinking": thinking}
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **switches)
    if model_type == "qwen":
        content = user_content(question, ratio, model_type, request=request, ratio_format=ratio_format)
        return (
            f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{content}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
    if model_type == "llama3":
        return (
            f"{bos}<|start_header_id|>user<|end_header_id|>\n\n"
            f"{user_content(question, ratio, model_type, eos, request, ratio_format)}{eos}"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    raise ValueError(f"unknown model type {model_type!r}; expected one of {PROMPT_FORMATS}")


def recorded_format(recorded: str | None, where) -> str:
    """The prompt format stage 1 recorded (in `where`), for the later stages' `--model-type auto`.
    Nothing recorded: qwen, TokenSkip's default before the chat formats existed, said aloud."""
    if recorded in PROMPT_FORMATS:
        return recorded
    if recorded is None:
        said = (f"{where} records no prompt format" if Path(where).is_file()
                else f"there is no {where} to read the prompt format from")
        print(f"--model-type auto: {said}; using qwen (pass --model-type to choose)")
        return "qwen"
    raise ValueError(f"{where} records an unknown prompt format {recorded!r}")


def cot_of(model_output: str) -> str:
    """The chain of thought: the output before the final-answer marker, when there is one."""
    return model_output.split(ANSWER_MARKER)[0]

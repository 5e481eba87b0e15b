"""Which prompt format a model gets, decided from its tokenizer's chat template, never its architecture.

TokenSkip's released adapters were trained on two hand-written prompts (`qwen`, `llama3` in
tokenskip/prompting/prompts.py); they stay byte-exact for the models they were written for. Every other chat
model — reasoning models above all — is prompted through its own chat template (`chat`). The
architecture cannot decide this: DeepSeek-R1-Distill-Qwen has Qwen2's architecture and a template
of its own, and a prompt in the wrong format is a silent accuracy loss.

FAMILIES is read top to bottom; the first family whose markers all appear in the template wins.
Each family also names the LLaMA-Factory template that renders training data into the prompt
`evaluation.py` builds (tests/test_chat_models.py checks that token for token), and the recipe to
start from.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenskip.core.errors import UsageError


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # the prompt format: "qwen" / "llama3" (TokenSkip's fixed prompts) or "chat"
    llamafactory_template: str  # LLaMA-Factory's `template:` for training data of this family
    markers: tuple[str, ...]  # substrings that all appear in the family's chat template
    absent: tuple[str, ...] = ()  # substrings that must not appear
    # LLaMA-Factory's `default_system:` when its template's differs from the model's own (or is needed)
    default_system: str | None = None
    thinks: bool = False  # the model writes a <think> block (what --baseline nothinking prefills)


FAMILIES: tuple[Family, ...] = (
    # DeepSeek-R1 and its distills (Qwen and Llama based): the generation prompt opens <think>
    Family("deepseek-r1", "chat", "deepseekr1", ("<｜User｜>", "<｜Assistant｜>"), thinks=True),
    # Qwen3 (thinking switch `enable_thinking`), before plain ChatML
    Family("qwen3", "chat", "qwen3", ("<|im_start|>", "enable_thinking"), thinks=True),
    # QwQ and other ChatML reasoning models that open <think> in the generation prompt
    Family("chatml-thinking", "chat", "qwen3", ("<|im_start|>", "<think>"), thinks=True),
    # Qwen2.5-Instruct: TokenSkip's own qwen prompt (its system line, as the original hard-coded it)
    Family("qwen2.5", "qwen", "qwen", ("<|im_start|>", "You are Qwen, created by Alibaba Cloud"),
           default_system="You are a helpful assistant."),
    # Llama-3.x-Instruct: TokenSkip's own llama3 prompt (no system turn, no date line)
    Family("llama3", "llama3", "llama3", ("<|start_header_id|>", "<|eot_id|>")),
    # SmolLM2: ChatML with a default system line (no final period, unlike LLaMA-Factory's smollm2 template)
    Family("smollm2", "chat", "smollm2", ("<|im_start|>", "named SmolLM"),
           default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    Family("gemma", "chat", "gemma", ("<start_of_turn>",)),
    Family("chatml", "chat", "chatml", ("<|im_start|>",)),
)
GENERIC = Family("other", "chat", "", ())


def family_of(chat_template: str | None, *, flag: str = "auto") -> Family:
    """The family a chat template belongs to (GENERIC when none matches); a one-line error without one."""
    if not chat_template:
        raise UsageError(f"the tokenizer has no chat template, so --model-type {flag} cannot build its prompt; "
                         "pass --model-type qwen or --model-type llama3 for TokenSkip's fixed prompts")
    if not isinstance(chat_template, str):  # some tokenizers keep several named templates
        chat_template = dict(chat_template).get("default") or next(iter(dict(chat_template).values()), "")
    for family in FAMILIES:
        if all(m in chat_template for m in family.markers) and not any(a in chat_template for a in family.absent):
            return family
    return GENERIC


def family_named(name: str) -> Family:
    return next((family for family in (*FAMILIES, GENERIC) if family.name == name), GENERIC)


def resolve_model_type(model_type: str, tokenizer) -> tuple[str, str]:
    """(prompt format, family name) for `--model-type` on this tokenizer.

    `auto` picks TokenSkip's fixed prompt for Qwen2.5- and Llama-3-Instruct and `chat` for the rest;
    an explicit `chat` needs a chat template; `qwen`/`llama3` are used as given.
    """
    template = getattr(tokenizer, "chat_template", None)
    if model_type in ("auto", "chat"):
        family = family_of(template, flag=model_type)
        return (family.model_type if model_type == "auto" else "chat"), family.name
    return model_type, family_of(template).name if template else GENERIC.name

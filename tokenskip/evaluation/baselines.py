"""The training-free ways to shorten a CoT that evaluation.py runs beside TokenSkip's adapter (--baseline,
--runs), each defined once here: what it does to the prompt, to generation, and what budget it takes.

The paper's two: truncation (the output cut at a token budget, answer included) and the prompt-based
reduction request. The field's since: budget forcing (s1: the thinking ended at the budget and the answer
forced), Chain-of-Draft and TALE-EP's token-budget prompt (prompts only), and NoThinking (a reasoning
model's thinking block prefilled as finished). Their exact strings live in tokenskip/prompting/prompts.py.

A budgeted baseline's budget at γ is round(γ x the base model's mean CoT tokens on the same split), as the
paper derives truncation's, so that all of them compare at the same token counts; or N tokens given
(--budget-tokens N), which needs no base-model run and is filed by N ({folder}/{N}tok/).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokenskip.backends import Completion
from tokenskip.core.errors import UsageError
from tokenskip.core.layout import BUDGETED_METHODS, RATIO_FREE_METHODS
from tokenskip.prompting import prompts, thinking


@dataclass(frozen=True)
class Baseline:
    name: str  # --baseline's value, the run's method (layout.RUN_FOLDERS names its folder)
    about: str  # one line for --help
    source: str  # where it comes from
    caps_generation: bool = False  # the budget is the generation's token cap (its first phase, for budget forcing)
    thinking_only: bool = False  # only for models with a thinking block

    @property
    def budgeted(self) -> bool:
        """Takes a token budget: round(γ x the base model's mean CoT tokens), which needs that run first, or N
        tokens given (--budget-tokens)."""
        return self.name in BUDGETED_METHODS

    @property
    def takes_ratio(self) -> bool:
        """Runs at γ < 1, a folder per γ; the others run once, without γ."""
        return self.name not in RATIO_FREE_METHODS


TABLE: dict[str, Baseline] = {baseline.name: baseline for baseline in (
    Baseline("truncation", "the output cut at the budget, answer included", "TokenSkip, arXiv 2502.12067",
             caps_generation=True),
    Baseline("prompt", "the prompt asks for (1-γ) fewer words", "TokenSkip, arXiv 2502.12067"),
    Baseline("budget", "budget forcing: the CoT (or thinking) ended at the budget, then the answer forced",
             "s1, arXiv 2501.19393", caps_generation=True),
    Baseline("budget-prompt", "the prompt asks for fewer than the budget's tokens", "TALE-EP, arXiv 2412.18547"),
    Baseline("cod", "Chain-of-Draft's prompt: a few words per step (no γ)", "Chain-of-Draft, arXiv 2502.18600"),
    Baseline("nothinking", "reasoning models: the thinking block prefilled as finished (no γ)",
             "NoThinking, arXiv 2504.09858", thinking_only=True),
)}
NAMES = tuple(TABLE)
WITH_RATIO = tuple(name for name, baseline in TABLE.items() if baseline.takes_ratio)
BUDGETED = tuple(name for name, baseline in TABLE.items() if baseline.budgeted)
# budget forcing's second phase: the most tokens the forced answer may take (a boxed number, or a thinking
# model's short answer section); recorded in run.json as answer_tokens
FORCED_ANSWER_TOKENS = 64


def help_text() -> str:
    return "; ".join(f"{b.name}: {b.about} ({b.source})" for b in TABLE.values())


def check_model(baseline: str | None, family, thinking_switch: str) -> None:
    """NoThinking needs a model with a thinking block: a one-line refusal elsewhere."""
    if baseline != "nothinking":
        return
    if not family.thinks:
        raise UsageError(f"--baseline nothinking prefills a thinking block, and this model's chat template "
                         f"({family.name} family) has none; it applies to reasoning models (DeepSeek-R1 distills, "
                         "Qwen3, QwQ)")
    if thinking_switch == "off":
        raise UsageError("--baseline nothinking with --thinking off: the template already skips the thinking "
                         "(Qwen3's own switch); run one or the other")


def prompt_request(baseline: str | None, ratio: float, budget: int | None) -> str:
    """The words a baseline adds after the question ("" for none)."""
    if baseline == "prompt":
        return prompts.reduction_request(ratio)
    if baseline == "cod":
        return prompts.DRAFT_REQUEST
    if baseline == "budget-prompt":
        return prompts.budget_request(budget)
    return ""


def prefilled(baseline: str | None, prompt: str) -> str:
    """The generation prompt with what a baseline writes into the model's turn before it answers."""
    if baseline != "nothinking":
        return prompt
    # an R1-style template has opened <think> already; Qwen3's (thinking on) leaves it to the model
    opening = "" if thinking.opens_thinking(prompt) else f"{thinking.OPEN}\n"
    return f"{prompt}{opening}{prompts.NO_THINKING_PREFILL}"


def forced_end(output: str, prompt: str) -> str:
    """What budget forcing appends to an output cut at the budget: the end of the thinking (s1's delimiter and
    "Final Answer:"), else TokenSkip's answer cue; nothing when the CoT had ended and only its answer was cut
    (the second phase then finishes that answer)."""
    split = thinking.split_output(output, prompt)
    if split.is_thinking:
        return "" if split.finished else prompts.FORCED_THINKING_END
    return "" if prompts.ANSWER_MARKER in output else prompts.BOXED_CUE


def generate(backend, prompt_texts: list[str], max_new_tokens: int, ids: list[str], baseline: str | None,
             answer_tokens: int = FORCED_ANSWER_TOKENS) -> list[Completion]:
    """The backend's completions; for budget forcing two phases on any backend (the second is a plain
    continuation of prompt + output + forced end): the CoT to `max_new_tokens`, then, for each output cut
    there, the forced answer to `answer_tokens`. A completion's tokens count both phases; its text holds the
    forced end (recorded apart as `forced`, since the model did not write it)."""
    first = backend.generate(prompt_texts, max_new_tokens, ids=ids)
    if baseline != "budget":
        return first
    cut = [i for i, completion in enumerate(first) if completion.capped]
    if not cut:
        return first
    ends = {i: forced_end(first[i].text, prompt_texts[i]) for i in cut}
    second = backend.generate([prompt_texts[i] + first[i].text + ends[i] for i in cut], answer_tokens,
                              ids=[f"{ids[i]}/answer" for i in cut])
    merged = list(first)
    for i, answer in zip(cut, second):
        latency = (first[i].latency_s + answer.latency_s
                   if first[i].latency_s is not None and answer.latency_s is not None else None)
        merged[i] = replace(answer, text=first[i].text + ends[i] + answer.text,
                            n_tokens=first[i].n_tokens + answer.n_tokens, latency_s=latency, forced=ends[i])
    return merged

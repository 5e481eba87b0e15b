"""Reasoning models' outputs: the thinking inside `<think>…</think>` and the answer after it.

A thinking output is recognised from its text, whatever the model: it contains `</think>`. The
thinking is what comes before it (less an opening `<think>`, which the chat template may already
have written into the prompt, as DeepSeek-R1's does); the answer section is everything after it,
kept verbatim, since stage 3 writes it back unchanged after the compressed thinking.

An output that opened a thinking block (in its text or in its prompt) and never closed it ran out
of tokens while thinking: it has no answer, and is counted as such rather than graded on whatever
number its unfinished reasoning last mentioned.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


@dataclass(frozen=True)
class Split:
    thinking: str | None  # None: not a thinking output
    answer: str  # the answer section (the whole output when not a thinking output)
    finished: bool = True  # False: the token budget ran out inside the thinking block

    @property
    def is_thinking(self) -> bool:
        return self.thinking is not None


def opens_thinking(prompt: str) -> bool:
    """Whether the prompt itself opened the thinking block (R1's template ends with `<think>\\n`)."""
    return prompt.rstrip().endswith(OPEN)


def split_output(output: str, prompt: str = "") -> Split:
    """The thinking and the answer section of one model output (see the module's docstring)."""
    if CLOSE in output:
        thinking, answer = output.split(CLOSE, 1)
        return Split(_without_open(thinking).strip(), answer)
    if output.lstrip().startswith(OPEN) or opens_thinking(prompt):
        return Split(_without_open(output).strip(), "", finished=False)
    return Split(None, output)


def _without_open(text: str) -> str:
    stripped = text.lstrip()
    return stripped[len(OPEN):] if stripped.startswith(OPEN) else text


def thinking_output(compressed_thinking: str, answer_section: str) -> str:
    """A training target for a thinking model: the (compressed) thinking in its block, then the
    answer section exactly as the model wrote it."""
    return f"{OPEN}\n{compressed_thinking}\n{CLOSE}{answer_section}"

"""The stage's input: items read from a stage-1 or stage-2 file, and the token pieces each request
is built from (prompt, context, answer cue)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from tokenskip.compression.soft.settings import BOXED_CUE, THINK_CLOSE_CUE, SoftSettings
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_jsonl
from tokenskip.prompting import prompts, thinking


@dataclass(frozen=True)
class Item:
    """One question with the CoT the generator reads (its context) and the gold answer."""

    id: str
    question: str
    context: str
    answer: str
    answer_format: str = "math"
    thinking: bool = False  # a <think> block: cued with </think>, answered freely
    hard_context: str | None = None  # the hard-compressed CoT, when the input file has one



def load_items(path: str | os.PathLike, *, context_field: str = "auto", model_type: str = "auto",
               max_items: int | None = None, prefer_hard: bool = True) -> list[Item]:
    """Questions and CoTs from any of the pipeline's files:

    * stage 1's predictions.jsonl: the CoT extracted from `model_output` as stage 2 extracts it;
    * stage 2's ratio files: with `prefer_hard` (training: the hybrid, soft compression after hard)
      `compressed_cot`, else (evaluation: the text condition reads the original) `cot`; the
      hard-compressed one is kept beside it either way, for the hard and hybrid conditions;
    * any JSONL with `question`, `cot` and `answer` fields (and `compressed_cot`, if any).
    """
    if context_field == "auto" and not prefer_hard:
        context_field = "auto-original"
    from tokenskip.compression import driver
    from tokenskip.data import benchmarks as data

    path = Path(path)
    records = read_jsonl(path, what="CoT file")
    if not records:
        raise UsageError(f"{path} holds no records; point --input at a stage-1 or stage-2 file")
    items = []
    stage1_format = None
    for line_no, record in enumerate(records, start=1):
        where = f"{path}:{line_no}"
        question = record.get("question")
        if question is None and record.get("messages"):
            question = record["messages"][0].get("content")
        answer = record.get("answer")
        if not isinstance(question, str) or answer is None:
            raise UsageError(f"{where}: needs a question and an answer; is this a stage-1 or stage-2 file?")
        hard = None
        is_thinking = "answer_section" in record
        if "compressed_cot" in record and context_field in ("auto", "compressed_cot"):
            context, hard = record["compressed_cot"], record["compressed_cot"]
        elif context_field in ("auto", "auto-original", "cot") and "cot" in record:
            context, hard = record["cot"], record.get("compressed_cot")
        elif context_field in ("auto", "auto-original") and "model_output" in record:
            if stage1_format is None:
                stage1_format = driver.recorded_model_type(path, model_type)
            split = thinking.split_output(record["model_output"], record.get("prompt", ""))
            context, _ = driver.extract_cot(record["model_output"], stage1_format, split=split)
            is_thinking = split.is_thinking
            if context is None:
                continue  # no usable CoT (empty, cut off inside <think>): nothing to compress
        elif context_field not in ("auto", "auto-original", "cot", "compressed_cot") and context_field in record:
            context = record[context_field]
        else:
            wanted = "cot, compressed_cot or model_output" if context_field.startswith("auto") else context_field
            raise UsageError(f"{where}: no CoT field ({wanted}); pass --context-field NAME")
        if not isinstance(context, str) or not context.strip():
            continue
        items.append(Item(id=str(record.get("id", line_no)), question=question, context=context.strip(),
                          answer=str(answer), answer_format=data.record_answer_format(record),
                          thinking=is_thinking, hard_context=hard.strip() if isinstance(hard, str) else None))
    if not items:
        raise UsageError(f"{path}: no record has a usable CoT")
    return items[:max_items] if max_items else items





@dataclass(frozen=True)
class Pieces:
    """One request's token ids around its context: prompt, then the context, then the answer cue."""

    prefix: list[int]
    context: list[int]
    cue: list[int]
    question: list[int]  # what the compressor reads before each block
    cue_text: str


@dataclass(frozen=True)
class Soft:
    """One request's compressed context: what the generator's input gets at its positions, and
    (inject="layer") the compressor's layer-N hidden states that replace them at layer N."""

    inputs: Any  # (positions, hidden)
    states: Any = None  # (positions, hidden) or None

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass(frozen=True)
class GeneratorInput:
    """One request's input embeddings, and the soft context's place in them (for layer injection)."""

    embeds: Any  # (positions, hidden)
    soft: Soft | None = None
    offset: int = 0  # the first position of the soft context


def request_pieces(tokenizer, item: Item, settings: SoftSettings, context: str | None) -> Pieces:
    """The token ids of one request; `context` None is the question-alone condition."""
    prompt = prompts.build_prompt(item.question, model_type=settings.prompt_format, tokenizer=tokenizer,
                                  bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "")
    if item.thinking:
        prefix_text = prompt if thinking.opens_thinking(prompt) else prompt + "<think>\n"
        cue = THINK_CLOSE_CUE
    else:
        prefix_text = prompt
        cue = BOXED_CUE if context else BOXED_CUE.lstrip()
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    context_ids = encode(context)[: settings.max_context_tokens] if context else []
    return Pieces(encode(prefix_text), context_ids, encode(cue),
                  encode(item.question)[: settings.max_question_tokens], cue)


def blocks_of(context_ids: Sequence[int], settings: SoftSettings) -> list[list[int]]:
    return [list(context_ids[i:i + settings.block_size]) for i in range(0, len(context_ids), settings.block_size)]


def soft_positions(n_context_tokens: int, settings: SoftSettings) -> int:
    """How many embeddings a context of `n_context_tokens` becomes."""
    full, rest = divmod(n_context_tokens, settings.block_size)
    return full * settings.mem_tokens + (settings.memory_count(rest) if rest else 0)


def answer_of(cue_text: str, continuation: str) -> str:
    """The generated answer, cut where it ends: at the box's closing brace for the boxed cue."""
    if cue_text.endswith("\\boxed{"):
        end = continuation.find("}")
        return continuation[: end + 1] if end >= 0 else continuation
    return continuation



def context_for(item: Item, condition: str) -> str | None:
    if condition == "question":
        return None
    if condition in ("hard", "hybrid"):
        return item.hard_context
    return item.context



def with_hard_contexts(items: Sequence[Item], *, ratio: float, method: str, model_path: str, device: str,
                       progress: bool = True) -> list[Item]:
    """The items with their CoTs hard-compressed at `ratio` by a stage-2 scorer (cts reads with
    `model_path` as its reference model; llmlingua2 and ner with it as their classifier)."""
    from tokenskip.compression.scorers import CoT, scorer_class

    scorer_type = scorer_class(method)
    scorer = scorer_type(model_path, device=device, progress=progress)
    scorer.check_ratios([ratio])
    compressed = scorer.compress([CoT(item.context, item.question, item.answer) for item in items], [ratio])
    return [replace(item, hard_context=texts[ratio]) for item, texts in zip(items, compressed)]

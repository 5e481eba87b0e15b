"""Stage 2: turn the model's own correct CoTs into compressed CoTs at several ratios γ.

Shared by every compression method (LLMLingua-2, NER-enhanced, CTS): keep the correct answers,
extract well-formed CoTs that are not too long, let the method's scorer compress them at all
ratios in one scoring pass, and write one file per ratio in TokenSkip's line format, with token
counts in the *target* model's tokenizer.

A run holds the locks of stage 1's samples folder and of its output folder from its first read to
its last write, and writes nothing until everything is computed: a run that fails (no CoT left, a
bad flag, an interrupted scorer) leaves the previous run's files exactly as they were.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenskip.compression.scorers import CoT, Scorer
from tokenskip.compression.scorers.base import add_counts
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import write_json_atomic, write_jsonl_atomic
from tokenskip.core.locking import locked
from tokenskip.core.shards import ShardPlan
from tokenskip.data.records import (
    CompressedCoT,
    FormattedCoT,
    Stage1Metrics,
    Stage1Prediction,
    question_of,
    read_records,
)
from tokenskip.grading.parsing import extract_boxed
from tokenskip.models.loading import looks_like_hub_id
from tokenskip.prompting import prompts, thinking
from tokenskip.prompting.prompts import ANSWER_MARKER, cot_of

STAGE1 = "evaluation.py --data-type train"
# the sentence that states the final answer: from the last sentence start before `\boxed`
_FINAL_BOXED_SENTENCE = re.compile(r"(?:^|(?<=[.!?:])\s+|\n)[^\n]*?\\boxed\{[^\n]*$", re.DOTALL)
# TokenSkip's final-answer sentence up to the brace that opens its boxed answer, and what may follow that box
_ANSWER_SENTENCE = re.compile(re.escape(ANSWER_MARKER.strip()) + r"\s*\$?\\boxed\{")
_AFTER_ANSWER_BOX = re.compile(r"\$?\s*\.?\s*")


def check_predictions(predictions: Path) -> None:
    if not predictions.is_file():
        raise UsageError(f"stage-1 predictions not found: {predictions} (it is written by {STAGE1})")


def target_tokenizer_path(predictions: Path, tokenizer_path: str | None) -> str:
    """The target model's tokenizer, which counts CoT tokens: the flag, else stage 1's model."""
    from tokenskip.models.loading import resolve_model_path

    if tokenizer_path:
        return resolve_model_path(tokenizer_path, "--tokenizer-path")
    recorded = Stage1Metrics.beside(predictions).model_path
    if not recorded:
        raise UsageError(f"cannot tell which model wrote {predictions} (no model_path in a metrics.json next to it); "
                         "pass --tokenizer-path with the target model's folder")
    return recorded_model(recorded, predictions.parent / layout.METRICS)


def recorded_model(recorded: str, metrics: Path) -> str:
    """Stage 1's model as its metrics.json recorded it: a folder, or a hub model in this machine's cache.

    Stage 1 records a local folder as it was given, so a relative one is relative to where stage 1
    ran. It is never passed on to be resolved as a hub id: `models/X`, not found from here, would
    look like one and send the hub a folder name. A real hub id that stage 1 loaded from the hub
    is in the local hub cache.
    """
    folder = Path(recorded).expanduser()
    if folder.is_dir():
        return str(folder)
    if looks_like_hub_id(recorded) and _in_hub_cache(recorded):
        return recorded
    where = "" if folder.is_absolute() else f" from here ({Path.cwd()})"
    raise UsageError(f"the stage-1 model folder {recorded} (recorded in {metrics}) is not found{where}; "
                     "pass --tokenizer-path with the target model's folder")


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid hub id at all
        return False


def token_counter(tokenizer_path: str):
    """Counts tokens as the target model sees them (no special tokens)."""
    from tokenskip.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def recorded_model_type(predictions: Path, model_type: str) -> str:
    """The prompt format stage 1 used: `--model-type` as given, or for `auto` the one stage 1
    recorded in its metrics.json (it resolved its own `auto` from the model's chat template)."""
    if model_type != "auto":
        return model_type
    stage1 = Stage1Metrics.beside(predictions)
    return prompts.recorded_format(stage1.model_type, stage1.path)


def extract_cot(model_output: str, model_type: str, prompt: str = "",
                split: thinking.Split | None = None) -> tuple[str | None, str]:
    """The CoT to compress, or None with the reason it is not usable.

    A thinking output (one with `</think>`, any model type): the thinking, never the answer
    section after it (see tokenskip/prompting/thinking.py). qwen and chat: the whole output, as the original
    compressed it, less a final-answer sentence that ends it (see `without_final_answer_sentence`).
    llama3: the text before "The final answer is:"; without that marker, the text before the
    sentence holding the final `\\boxed{}` (the original dropped those, keeping a fraction of the data).
    """
    text = model_output.strip()
    if not text:
        return None, "empty output"
    split = split or thinking.split_output(model_output, prompt)
    if split.is_thinking:
        if not split.finished:
            return None, "ran out of tokens inside <think>"
        return (split.thinking, "kept") if split.thinking else (None, "empty thinking")
    if model_type in ("qwen", "chat"):
        cot = without_final_answer_sentence(text)
        return (cot, "kept") if cot else (None, "no reasoning before the answer")
    if ANSWER_MARKER in model_output:
        cot = cot_of(model_output).strip()
    else:
        match = _FINAL_BOXED_SENTENCE.search(model_output)
        if match is None:
            return None, "no final answer"
        cot = model_output[:match.start()].strip()
    return (cot, "kept") if cot else (None, "no reasoning before the answer")


def without_final_answer_sentence(text: str) -> str:
    """`text` less a final `The final answer is: $\\boxed{...}$` (a period may follow) that ends it.

    Stage 3 writes that sentence after every CoT, so an output that already ends with it (a model
    trained on TokenSkip's data writes it) would otherwise train on the answer stated twice. An
    output without it keeps its whole text, its own final `\\boxed` sentence included.
    """
    sentences = list(_ANSWER_SENTENCE.finditer(text))
    if not sentences:
        return text
    last = sentences[-1]
    boxed = extract_boxed(text[last.start():])
    if not boxed:  # the box is never closed
        return text
    after_box = last.end() + len(boxed[0]) + 1
    return text[:last.start()].rstrip() if _AFTER_ANSWER_BOX.fullmatch(text, after_box) else text


@dataclass
class PreparedCoTs:
    correct: list[dict]  # stage 1's correct answers (predictions_correct.jsonl)
    records: list[dict]  # those with a usable CoT, each with its "cot" (predictions_formatted.jsonl)
    n_predictions: int
    dropped: Counter  # why the other correct answers were left out

    @property
    def n_correct(self) -> int:
        return len(self.correct)


def prepare(predictions_path: Path, *, model_type: str, max_cot_tokens: int, count_tokens) -> PreparedCoTs:
    """Steps 1 and 2: stage 1's correct answers, and those with a CoT to compress; a UsageError
    saying why when there is none."""
    records = read_records(predictions_path, Stage1Prediction, what="stage-1 predictions file", made_by=STAGE1)
    if not records:
        raise UsageError(f"{predictions_path} is empty; rerun {STAGE1}")
    correct = [record for record in records if record["accuracy"]]
    dropped: Counter = Counter()
    formatted = []
    seen: set[tuple[str, str]] = set()  # (question, CoT): with --n_samples, one question's samples may repeat
    for record in correct:
        split = thinking.split_output(record["model_output"], record.get("prompt", ""))
        cot, reason = extract_cot(record["model_output"], model_type, split=split)
        if cot is not None and count_tokens(cot) > max_cot_tokens:
            cot, reason = None, f"longer than {max_cot_tokens} tokens"
        if cot is not None and (record.get("question_id", record["id"]), cot) in seen:
            cot, reason = None, "same CoT as another sample of its question"
        if cot is None:
            dropped[reason] += 1
            continue
        seen.add((record.get("question_id", record["id"]), cot))
        # a thinking output keeps its answer section, which stage 3 writes back verbatim after the thinking
        formatted.append({**record, "cot": cot, **({"answer_section": split.answer} if split.is_thinking else {})})
    prepared = PreparedCoTs(correct, formatted, len(records), dropped)
    if not formatted:
        raise UsageError(nothing_to_compress(prepared, model_type))
    return prepared


def nothing_to_compress(prepared: PreparedCoTs, model_type: str) -> str:
    """Why no CoT is left: no correct answer at all, or every correct one dropped (and for what)."""
    n, k = prepared.n_predictions, prepared.n_correct
    counts = f"no CoT left to compress: {n} predictions, {k} correct"
    if not k:
        return (f"{counts} (0 of {n} stage-1 answers are correct); collect more with {STAGE1} "
                "(more questions, a larger --max_new_tokens if answers were cut short, or a stronger model)")
    reasons = ", ".join(f"{count} {why}" for why, count in sorted(prepared.dropped.items()))
    fixes = []
    if any(why.startswith("longer than") for why in prepared.dropped):
        fixes.append("raise --max-cot-tokens")
    if any(not why.startswith("longer than") for why in prepared.dropped):
        fixes.append(f"check that --model-type {model_type} is the stage-1 model's")
    return f"{counts}, all {k} correct CoTs dropped ({reasons}); {' and '.join(fixes)}"


def compressed_line(record: FormattedCoT, cot: str, compressed: str, original_tokens: int,
                    compressed_tokens: int) -> CompressedCoT:
    """TokenSkip's line format, with token counts in the target model's tokenizer."""
    return {
        "id": record["id"],
        "question": question_of(record),
        "input": record.get("prompt", ""),
        "output": record["model_output"],
        "answer": record.get("answer", ""),
        "model_answer": record["prediction"],
        "is_correct": record["accuracy"],
        "cot": cot,
        "compressed_cot": compressed,
        "original_cot_tokens": original_tokens,
        "compressed_cot_tokens": compressed_tokens,
        "compression_rate": compressed_tokens / original_tokens if original_tokens else 1.0,
        **({"answer_section": record["answer_section"]} if "answer_section" in record else {}),
    }


def compress_cots(records: list[FormattedCoT], scorer: Scorer, ratios: Sequence[float],
                  count_tokens) -> tuple[dict[float, list[dict]], list[dict]]:
    """Step 3: every CoT at every ratio from one scoring pass, as each ratio file's lines, and each
    CoT's counts behind the summary's scorer-specific figures (Scorer.cot_counts)."""
    cots = [CoT(text=r["cot"], question=question_of(r), answer=str(r["prediction"])) for r in records]
    scorer.check_ratios(ratios)
    scored = scorer.score(cots)
    compressed = [{ratio: scorer.select(one, ratio) for ratio in ratios} for one in scored]
    original_tokens = [count_tokens(cot.text) for cot in cots]
    lines_by_ratio = {ratio: [compressed_line(record, cot.text, texts[ratio], n, count_tokens(texts[ratio]))
                              for record, cot, texts, n in zip(records, cots, compressed, original_tokens)]
                      for ratio in ratios}
    counts = [scorer.cot_counts(cot, texts, one) for cot, texts, one in zip(cots, compressed, scored)]
    return lines_by_ratio, counts


def summarize(prepared: PreparedCoTs, scorer: type[Scorer], lines_by_ratio: dict[float, list[dict]],
              counts: list[dict]) -> dict:
    """compression_summary.json, from the ratio files' lines and the CoTs' counts, in CoT order."""
    per_ratio = {}
    for ratio, lines in lines_by_ratio.items():
        per_ratio[str(ratio)] = {
            "target": ratio,
            "mean_actual_ratio": sum(line["compression_rate"] for line in lines) / len(lines),
            "mean_original_tokens": sum(line["original_cot_tokens"] for line in lines) / len(lines),
            "mean_compressed_tokens": sum(line["compressed_cot_tokens"] for line in lines) / len(lines),
        }
    totals: dict[float, dict[str, float]] = {}
    for one in counts:
        add_counts(totals, one)
    for ratio, extra in scorer.report_from_counts(totals).items():
        per_ratio[str(ratio)].update(extra)
    return {
        "method": scorer.name,
        "file_stem": scorer.file_stem,
        "n_predictions": prepared.n_predictions,
        "n_correct": prepared.n_correct,
        "n_compressed": len(prepared.records),
        "dropped": dict(sorted(prepared.dropped.items())),
        "ratios": per_ratio,
    }


def write_outputs(samples: Path, out_folder: Path, prepared: PreparedCoTs, lines_by_ratio: dict[float, list[dict]],
                  summary: dict) -> None:
    """Step 4, once everything is computed: each file replaced atomically, the summary last."""
    write_jsonl_atomic(samples / layout.CORRECT, prepared.correct)
    write_jsonl_atomic(samples / layout.FORMATTED, prepared.records)
    for ratio, lines in lines_by_ratio.items():
        write_jsonl_atomic(layout.ratio_file(out_folder, ratio, summary["file_stem"]), lines)
    write_json_atomic(out_folder / layout.COMPRESSION_SUMMARY, summary)


def run_stage(predictions: Path, out_folder: Path, *, model_type: str, max_cot_tokens: int,
              tokenizer_path: str | None, ratios: Sequence[float], make_scorer, scorer_model: str,
              scorer_type: type[Scorer], shards: ShardPlan = ShardPlan(), call: dict | None = None) -> dict:
    """The whole of a stage-2 script once its input, output and scorer are known: prepare the CoTs,
    then load the scorer (`make_scorer()`, after the data checks), compress, and write every file.
    With shards, one shard's share or the merge of all (tokenskip/compression/shards.py).

    Stage 2 writes next to stage 1's predictions and into `out_folder`, so it holds both folders'
    locks throughout: a second run on either fails at once, naming this one.
    """
    if max_cot_tokens < 1:
        raise UsageError("--max-cot-tokens must be positive")
    check_predictions(predictions)
    samples = predictions.parent
    model_type = recorded_model_type(predictions, model_type)
    job = Stage2Job(predictions, model_type, max_cot_tokens, target_tokenizer_path(predictions, tokenizer_path),
                    tuple(ratios), scorer_type, scorer_model, dict(call or {}))
    if shards.shard:
        from tokenskip.compression.shards import run_shard

        return run_shard(job, out_folder, shards.shard, make_scorer)
    if shards.merge:
        from tokenskip.compression.shards import merge_shards

        summary = merge_shards(job, out_folder, shards)
    else:
        with locked(samples, out_folder):
            prepared = job.prepare()
            scorer = make_scorer()
            print(f"Compressing {len(prepared.records)} CoTs with {scorer.name} ({scorer_model}) on {scorer.device}")
            lines_by_ratio, counts = compress_cots(prepared.records, scorer, ratios, job.count_tokens)
            summary = summarize(prepared, scorer_type, lines_by_ratio, counts)
            write_outputs(samples, out_folder, prepared, lines_by_ratio, summary)
    print_compression_summary(summary, out_folder)
    return summary


@dataclass(frozen=True)
class Stage2Job:
    """One stage-2 call's input and settings, which every shard of it must share."""

    predictions: Path
    model_type: str
    max_cot_tokens: int
    tokenizer_path: str
    ratios: tuple[float, ...]
    scorer_type: type[Scorer]
    scorer_model: str
    call: dict  # the stage's flags, recorded by each shard

    @functools.cached_property
    def count_tokens(self):
        return token_counter(self.tokenizer_path)

    def prepare(self) -> PreparedCoTs:
        return prepare(self.predictions, model_type=self.model_type, max_cot_tokens=self.max_cot_tokens,
                       count_tokens=self.count_tokens)


def print_compression_summary(summary: dict, out_folder: Path) -> None:
    dropped = ", ".join(f"{n} {why}" for why, n in summary["dropped"].items()) or "none"
    print(f"{summary['n_predictions']} predictions, {summary['n_correct']} correct, "
          f"{summary['n_compressed']} CoTs compressed (dropped: {dropped})")
    extra_keys = sorted({key for row in summary["ratios"].values() for key in row} -
                        {"target", "mean_actual_ratio", "mean_original_tokens", "mean_compressed_tokens"})
    print(f"{'target γ':>9} {'actual ratio':>13} {'tokens':>15}" + "".join(f" {key:>22}" for key in extra_keys))
    for row in summary["ratios"].values():
        tokens = f"{row['mean_original_tokens']:.0f} -> {row['mean_compressed_tokens']:.0f}"
        print(f"{row['target']:>9} {row['mean_actual_ratio']:>13.3f} {tokens:>15}"
              + "".join(f" {row[key]:>22.3f}" for key in extra_keys))
    print(f"wrote {out_folder}/{summary['file_stem']}_{{γ}}.jsonl")

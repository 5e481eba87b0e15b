"""Stage 2: turn the model's own correct CoTs into compressed CoTs at several ratios γ.

Shared by every compression method (LLMLingua-2, NER-enhanced, CTS): keep the correct answers,
extract well-formed CoTs that are not too long, let the method's scorer compress them at all
ratios in one scoring pass, and write one file per ratio in TokenSkip's line format, with token
counts in the *target* model's tokenizer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenskip.errors import UsageError
from tokenskip.jsonio import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.prompts import ANSWER_MARKER, cot_of
from tokenskip.scorers import CoT, Scorer

DEFAULT_RATIOS = (0.9, 0.8, 0.7, 0.6, 0.5)
STAGE1 = "evaluation.py --data-type train"
# the sentence that states the final answer: from the last sentence start before `\boxed`
_FINAL_BOXED_SENTENCE = re.compile(r"(?:^|(?<=[.!?:])\s+|\n)[^\n]*?\\boxed\{[^\n]*$", re.DOTALL)


def ratio_file(folder: Path, ratio: float, stem: str = Scorer.file_stem) -> Path:
    return folder / f"{stem}_{ratio}.jsonl"


def parse_ratios(ratios: Sequence[float]) -> list[float]:
    for ratio in ratios:
        if not 0.0 < ratio < 1.0:
            raise UsageError(f"compression ratios must be in (0, 1), got {ratio}")
    return sorted(set(float(r) for r in ratios), reverse=True)


def stage1_model_path(predictions: Path) -> str | None:
    """The model that wrote the predictions, as stage 1 recorded it in metrics.json."""
    metrics = predictions.parent / "metrics.json"
    return read_json(metrics).get("model_path") if metrics.exists() else None


def target_tokenizer_path(predictions: Path, tokenizer_path: str | None) -> str:
    """The target model's tokenizer, which counts CoT tokens: the flag, else stage 1's model."""
    from tokenskip.modeling import resolve_model_path

    if tokenizer_path:
        return resolve_model_path(tokenizer_path, "--tokenizer-path")
    recorded = stage1_model_path(predictions)
    if not recorded:
        raise UsageError(f"cannot tell which model wrote {predictions} (no model_path in a metrics.json next to it); "
                         "pass --tokenizer-path with the target model's folder")
    try:
        return resolve_model_path(recorded)
    except UsageError:
        raise UsageError(f"the stage-1 model {recorded} (from {predictions.parent / 'metrics.json'}) is not here; "
                         "pass --tokenizer-path with the target model's folder") from None


def token_counter(tokenizer_path: str):
    """Counts tokens as the target model sees them (no special tokens)."""
    from tokenskip.modeling import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


def extract_cot(model_output: str, model_type: str) -> tuple[str | None, str]:
    """The CoT to compress, or None with the reason it is not usable.

    qwen: the whole output, as the original compressed it. llama3: the text before
    "The final answer is:"; without that marker, the text before the sentence holding the final
    `\\boxed{}` (the original dropped those, keeping a fraction of the data).
    """
    text = model_output.strip()
    if not text:
        return None, "empty output"
    if model_type == "qwen":
        return text, "kept"
    if ANSWER_MARKER in model_output:
        cot = cot_of(model_output).strip()
    else:
        match = _FINAL_BOXED_SENTENCE.search(model_output)
        if match is None:
            return None, "no final answer"
        cot = model_output[:match.start()].strip()
    return (cot, "kept") if cot else (None, "no reasoning before the answer")


@dataclass
class PreparedCoTs:
    records: list[dict]  # formatted prediction records, each with its "cot"
    n_predictions: int
    n_correct: int
    dropped: Counter


def prepare(predictions_path: Path, *, model_type: str, max_cot_tokens: int, count_tokens) -> PreparedCoTs:
    """Steps 1 and 2: predictions_correct.jsonl and predictions_formatted.jsonl next to the input."""
    records = read_jsonl(predictions_path, what="stage-1 predictions file", made_by=STAGE1)
    if not records:
        raise UsageError(f"{predictions_path} is empty; rerun {STAGE1}")
    for line_no, record in enumerate(records, start=1):
        missing = [key for key in ("id", "accuracy", "model_output", "messages", "prediction") if key not in record]
        if missing:
            raise UsageError(f"{predictions_path}:{line_no}: lacks {', '.join(missing)}; is this stage-1 output?")
    correct = [record for record in records if record["accuracy"]]
    write_jsonl_atomic(predictions_path.parent / "predictions_correct.jsonl", correct)
    dropped: Counter = Counter()
    formatted = []
    for record in correct:
        cot, reason = extract_cot(record["model_output"], model_type)
        if cot is not None and count_tokens(cot) > max_cot_tokens:
            cot, reason = None, f"longer than {max_cot_tokens} tokens"
        if cot is None:
            dropped[reason] += 1
            continue
        formatted.append({**record, "cot": cot})
    write_jsonl_atomic(predictions_path.parent / "predictions_formatted.jsonl", formatted)
    prepared = PreparedCoTs(formatted, len(records), len(correct), dropped)
    if not formatted:
        reasons = ", ".join(f"{n} {why}" for why, n in dropped.items()) or "none dropped"
        raise UsageError(f"no CoT left to compress: {len(records)} predictions, {len(correct)} correct, "
                         f"0 kept ({reasons}); collect more with {STAGE1} or raise --max-cot-tokens")
    return prepared


def compressed_line(record: dict, cot: str, compressed: str, original_tokens: int, compressed_tokens: int) -> dict:
    """TokenSkip's line format, with token counts in the target model's tokenizer."""
    return {
        "id": record["id"],
        "question": record["messages"][0]["content"],
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
    }


def compress_to_files(prepared: PreparedCoTs, scorer: Scorer, ratios: Sequence[float], out_folder: Path,
                      count_tokens) -> dict:
    """Step 3: compress every CoT at every ratio, write the ratio files and a summary."""
    records = prepared.records
    cots = [CoT(text=r["cot"], question=r["messages"][0]["content"], answer=str(r["prediction"])) for r in records]
    compressed = scorer.compress(cots, ratios)
    original_tokens = [count_tokens(cot.text) for cot in cots]
    per_ratio = {}
    for ratio in ratios:
        lines = [compressed_line(record, cot.text, texts[ratio], n, count_tokens(texts[ratio]))
                 for record, cot, texts, n in zip(records, cots, compressed, original_tokens)]
        write_jsonl_atomic(ratio_file(out_folder, ratio, scorer.file_stem), lines)
        per_ratio[str(ratio)] = {
            "target": ratio,
            "mean_actual_ratio": sum(line["compression_rate"] for line in lines) / len(lines),
            "mean_original_tokens": sum(line["original_cot_tokens"] for line in lines) / len(lines),
            "mean_compressed_tokens": sum(line["compressed_cot_tokens"] for line in lines) / len(lines),
        }
    for ratio, extra in scorer.ratio_report(cots, compressed).items():
        per_ratio[str(ratio)].update(extra)
    summary = {
        "method": scorer.name,
        "file_stem": scorer.file_stem,
        "n_predictions": prepared.n_predictions,
        "n_correct": prepared.n_correct,
        "n_compressed": len(records),
        "dropped": dict(sorted(prepared.dropped.items())),
        "ratios": per_ratio,
    }
    write_json_atomic(out_folder / "compression_summary.json", summary)
    return summary


def run_stage(predictions: Path, out_folder: Path, *, model_type: str, max_cot_tokens: int,
              tokenizer_path: str | None, ratios: Sequence[float], make_scorer, scorer_model: str) -> dict:
    """The whole of a stage-2 script once its input, output and scorer are known: prepare the CoTs,
    then load the scorer (`make_scorer()`, after the data checks) and write every ratio file."""
    if max_cot_tokens < 1:
        raise UsageError("--max-cot-tokens must be positive")
    if not predictions.is_file():
        raise UsageError(f"stage-1 predictions not found: {predictions} (it is written by {STAGE1})")
    count_tokens = token_counter(target_tokenizer_path(predictions, tokenizer_path))
    prepared = prepare(predictions, model_type=model_type, max_cot_tokens=max_cot_tokens, count_tokens=count_tokens)
    scorer = make_scorer()
    print(f"Compressing {len(prepared.records)} CoTs with {scorer.name} ({scorer_model}) on {scorer.device}")
    summary = compress_to_files(prepared, scorer, ratios, out_folder, count_tokens)
    print_summary(summary, out_folder)
    return summary


def print_summary(summary: dict, out_folder: Path) -> None:
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

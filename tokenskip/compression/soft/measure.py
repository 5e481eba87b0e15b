"""Evaluation: accuracy, context positions and per-request times of each condition, and metrics.json."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.items import Item, Pieces, context_for, request_pieces, soft_positions
from tokenskip.compression.soft.model import SoftModel, generate_answers
from tokenskip.compression.soft.settings import CONDITION_NAMES, METRICS_KIND, EvalSettings
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import write_json_atomic, write_jsonl_atomic


def evaluate_conditions(model: SoftModel, items: Sequence[Item], *, settings: EvalSettings, out_dir: Path,
             model_dir: str, progress: bool = True) -> dict:
    """Accuracy, context positions and latency of each condition on `items`; writes
    predictions_{condition}.jsonl and metrics.json into `out_dir` and returns the metrics."""
    from tokenskip.grading.graders import Grader, GradeRequest

    model.eval()
    missing_hard = [c for c in settings.conditions if c in ("hard", "hybrid")] if any(
        item.hard_context is None for item in items) else []
    if missing_hard:
        raise UsageError(f"conditions {', '.join(missing_hard)} need hard-compressed CoTs: give a stage-2 ratio file "
                         "as --input, or --hard-ratio to compress here")
    results = {}
    with Grader(timeout=settings.grading_timeout) as grader:
        for condition in settings.conditions:
            requests = [request_pieces(model.tokenizer, item, model.settings, context_for(item, condition))
                        for item in items]
            tick = time.perf_counter()
            answers = generate_answers(model, requests, condition=condition, max_new_tokens=settings.max_answer_tokens,
                                       batch_size=settings.batch_size,
                                       desc=f"{condition} ({len(items)} questions)" if progress else None)
            batch_seconds = time.perf_counter() - tick
            grades = grader.grade(GradeRequest(model_output=pieces.cue_text + answer, reference=item.answer,
                                               question=item.question, answer_format=item.answer_format)
                                  for item, pieces, answer in zip(items, requests, answers))
            soft = condition in ("soft", "hybrid")
            positions = [soft_positions(len(p.context), model.settings) if soft else len(p.context) for p in requests]
            records = [{"id": item.id, "condition": condition, "question": item.question, "answer": item.answer,
                        "model_answer": answer, "prediction": grade.prediction, "accuracy": grade.correct,
                        "context_positions": n, "prompt_positions": len(p.prefix) + n + len(p.cue)}
                       for item, p, answer, grade, n in zip(items, requests, answers, grades, positions)]
            write_jsonl_atomic(out_dir / f"predictions_{condition}.jsonl", records)
            latency = probe_request_times(model, requests[: settings.latency_probe], condition,
                                          settings.max_answer_tokens)
            results[condition] = {
                "name": CONDITION_NAMES[condition],
                "accuracy": sum(r["accuracy"] for r in records) / len(records),
                "n": len(records),
                "context_positions": sum(positions) / len(positions),
                "prompt_positions": sum(r["prompt_positions"] for r in records) / len(records),
                "batched_seconds": round(batch_seconds, 3),
                **latency,
            }
    metrics = metrics_of(results, model, model_dir, settings, len(items))
    write_json_atomic(out_dir / layout.METRICS, metrics)
    return metrics


def probe_request_times(model: SoftModel, requests: Sequence[Pieces], condition: str, max_new_tokens: int) -> dict:
    """Per-request times, one request at a time: compression (soft conditions), prefill (one
    forward over the input) and the whole request (compression + generation), in milliseconds."""
    import torch
    if not requests:
        return {}
    soft = condition in ("soft", "hybrid")
    compress_ms, prefill_ms, total_ms = [], [], []
    with torch.no_grad(), model.adapter_set_for(soft):
        for pieces in requests:
            tick = time.perf_counter()
            vectors = model.compress([pieces])[0] if soft else None
            row = model.request_embeddings(pieces, vectors, with_context=condition != "question")
            compressed = time.perf_counter()
            boxed = pieces.cue_text.endswith("\\boxed{")
            model.generate([row], max_new_tokens=max_new_tokens, stop_at_brace=boxed)
            total_ms.append((time.perf_counter() - tick) * 1000)
            compress_ms.append((compressed - tick) * 1000)
            tick = time.perf_counter()
            model.prefill(row)
            prefill_ms.append((time.perf_counter() - tick) * 1000)
    mean = lambda values: round(sum(values) / len(values), 2)  # noqa: E731
    return {"n_probe": len(requests), "compress_ms": mean(compress_ms) if soft else 0.0,
            "prefill_ms": mean(prefill_ms), "latency_ms": mean(total_ms)}


def metrics_of(results: dict, model: SoftModel, model_dir: str, settings: EvalSettings, n_eval: int) -> dict:
    """metrics.json: one entry per condition, and the headline numbers the bench reports."""
    get = lambda condition, key: results.get(condition, {}).get(key)  # noqa: E731
    acc_q, acc_text, acc_soft = get("question", "accuracy"), get("text", "accuracy"), get("soft", "accuracy")
    gap = (acc_text - acc_q) if acc_q is not None and acc_text is not None else None
    recovered = (acc_soft - acc_q) / gap if gap and acc_soft is not None else None
    text_pos, soft_pos = get("text", "context_positions"), get("soft", "context_positions")
    return {
        "stage": METRICS_KIND,
        "model_dir": model_dir,
        "base_model": model.settings.base_model,
        "settings": asdict(model.settings),
        "eval": asdict(settings),
        "n_eval": n_eval,
        "conditions": results,
        "acc_question_only": acc_q,
        "acc_text": acc_text,
        "acc_soft": acc_soft,
        "acc_hard": get("hard", "accuracy"),
        "acc_hybrid": get("hybrid", "accuracy"),
        "gap_recovered": recovered,
        "positions_text": text_pos,
        "positions_soft": soft_pos,
        "position_ratio": (text_pos / soft_pos) if text_pos and soft_pos else None,
        "prefill_ms_text": get("text", "prefill_ms"),
        "prefill_ms_soft": get("soft", "prefill_ms"),
    }

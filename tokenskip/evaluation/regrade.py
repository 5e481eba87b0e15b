"""--regrade: grade an existing predictions file again, without generating."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.core.layout import GENERATION_LOG, METRICS
from tokenskip.core.locking import FolderLock
from tokenskip.data import benchmarks as data
from tokenskip.data.records import question_of
from tokenskip.evaluation.metrics import summarize
from tokenskip.evaluation.run import grade_outputs
from tokenskip.evaluation.summary import print_summary
from tokenskip.grading.graders import Grader, GradeRequest


def regrade(path: Path, *, primary: str, timeout: float) -> dict:
    """Grade existing predictions again with the current graders.

    A run's own predictions.jsonl (run.json beside it) is rewritten in place with its metrics.json,
    under the run folder's lock. Any other file (stage 2's predictions_correct.jsonl, a file received
    from someone else) is never replaced, and neither are the metrics of the run it sits in: the
    results go to `{name}.regraded.jsonl` and `{name}.regraded.metrics.json` beside it.
    """
    predictions = layout.run_predictions(path)
    in_place = layout.is_run_predictions(predictions)
    with FolderLock(predictions.parent):
        records = read_jsonl(predictions, what="predictions file", made_by="evaluation.py")
        if not records:
            raise UsageError(f"{predictions} is empty: nothing to regrade")
        for line_no, record in enumerate(records, start=1):
            missing = [key for key in ("messages", "model_output", "answer") if key not in record]
            if missing:
                raise UsageError(f"{predictions}:{line_no}: record lacks {', '.join(missing)}; "
                                 "is this a predictions file?")
        with Grader(primary=primary, timeout=timeout) as grader:
            grades = grade_outputs(grader, [(GradeRequest(question=question_of(record),
                                                          model_output=record["model_output"],
                                                          reference=str(record["answer"]),
                                                          answer_format=data.record_answer_format(record)),
                                             record.get("prompt", ""))
                                            for record in tqdm(records, desc="regrading", unit="q")])
        for record, grade in zip(records, grades):
            record.update(prediction=grade.prediction, accuracy=grade.correct, grades=grade.verdicts,
                          grade_timeouts=grade.timeouts, grade_errors=grade.errors)
        if in_place:
            out_predictions, metrics_path = predictions, predictions.parent / METRICS
            previous = read_json(metrics_path) if metrics_path.exists() else {}
            timings_path = predictions.parent / GENERATION_LOG
            timings = read_jsonl(timings_path) if timings_path.exists() else []
            generation = [t for t in timings if not t.get("probe")]
        else:
            stem = predictions.name.removesuffix(".jsonl")
            out_predictions = predictions.with_name(f"{stem}.regraded.jsonl")
            metrics_path = predictions.with_name(f"{stem}.regraded.metrics.json")
            previous, timings, generation = {"regraded_from": str(predictions)}, [], []
        metrics = summarize(records, primary=primary,
                            total_seconds=sum(t["seconds"] for t in generation) if generation else None,
                            total_tokens=sum(t["tokens"] for t in generation) if generation else None,
                            timings=timings)
        if not generation:  # keep the speed numbers of the run that made the file
            for key in ("sample_latency", "tokens_per_second", "request_latency"):
                metrics[key] = previous.get(key)
        write_jsonl_atomic(out_predictions, records)
        write_json_atomic(metrics_path, {**previous, **metrics})
    print_summary(metrics, out_predictions, metrics_path)
    return metrics

"""The records of the stage files: what each stage writes and the next one reads, in one place.

A CoT's way through the files (paths from tokenskip/core/layout.py):

    stage 1  evaluation.py         Original/train/samples/predictions.jsonl     Stage1Prediction per answer
                                   Original/train/samples/metrics.json          Stage1Metrics (the run)
    stage 2  LLMLingua.py ...      Original/train/samples/predictions_formatted.jsonl
                                                                                FormattedCoT: stage 1's correct
                                                                                answers with the CoT cut out
                                   {Compression,...}/train_outputs_compressed_ratio_{γ}.jsonl
                                                                                CompressedCoT per CoT and γ
    stage 3  get_llamafactory_input.py   LLaMA-Factory JSON                     TrainingRecord per CoT and γ

The files are JSON, written field for field as the original TokenSkip wrote them, so the records
are TypedDicts: a type over the very dicts that are written and read, nothing converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import read_json, read_jsonl


class Message(TypedDict):
    role: str
    content: str


class Stage1Prediction(TypedDict):
    """One answer of stage 1 (and of stage 5): a line of predictions.jsonl."""

    dataset: str
    id: str
    messages: list[Message]  # [the question, an empty assistant turn]: TokenSkip's format
    answer: str  # the gold answer
    reference: str
    prompt: str  # exactly what the model was given
    model_output: str
    prediction: str  # the answer read from the output
    cot_length: int  # target-model tokens of the CoT (a thinking output's thinking)
    output_tokens: int
    accuracy: bool
    grades: dict[str, bool]
    grade_timeouts: list[str]
    grade_errors: dict[str, str]
    capped: bool  # the output hit --max_new_tokens
    # thinking outputs only
    thinking: NotRequired[str]
    answer_section: NotRequired[str]
    thinking_tokens: NotRequired[int]
    answer_tokens: NotRequired[int]
    thinking_finished: NotRequired[bool]


class FormattedCoT(Stage1Prediction):
    """A correct stage-1 answer with the CoT stage 2 compresses (predictions_formatted.jsonl)."""

    cot: str


class CompressedCoT(TypedDict):
    """One CoT at one γ: a line of a ratio file, TokenSkip's format plus token counts."""

    id: str
    question: str
    input: str
    output: str
    answer: str
    model_answer: str
    is_correct: bool
    cot: str
    compressed_cot: str
    original_cot_tokens: int
    compressed_cot_tokens: int
    compression_rate: float
    answer_section: NotRequired[str]  # a thinking model's answer, kept verbatim for its target


class TrainingRecord(TypedDict):
    """One LLaMA-Factory (alpaca format) example: γ is in the input, the compressed CoT in the output."""

    instruction: str
    input: str
    output: str
    system: NotRequired[str]


# The fields each record's reader uses: a file that lacks one was not written by the stage before
# (or by an older version of it), and is refused at its first bad line instead of failing midway.
READ_FIELDS: dict[type, tuple[str, ...]] = {
    Stage1Prediction: ("id", "accuracy", "model_output", "messages", "prediction"),  # by stage 2
    FormattedCoT: ("id", "messages", "cot", "prediction"),  # by stage 3
    CompressedCoT: ("id", "question", "compressed_cot", "model_answer"),  # by stage 3
}


def read_records(path: Path, record: type, *, what: str, made_by: str) -> list[dict]:
    """The lines of a stage file, each checked for the fields its reader uses (`READ_FIELDS`)."""
    records = read_jsonl(path, what=what, made_by=made_by)
    for line_no, line in enumerate(records, start=1):
        missing = [key for key in READ_FIELDS[record] if key not in line]
        if missing:
            raise UsageError(f"{path}:{line_no}: lacks {', '.join(missing)}; it is not a {what} "
                             f"as {made_by} writes it (rerun that stage)")
    return records


def question_of(record: Stage1Prediction | FormattedCoT) -> str:
    """The question of a stage-1 record: its first message, as TokenSkip stores it."""
    return record["messages"][0]["content"]


@dataclass(frozen=True)
class Stage1Metrics:
    """What stage 1 recorded about its run in the metrics.json beside its predictions ({} if absent)."""

    path: Path
    recorded: dict[str, Any]

    @classmethod
    def beside(cls, predictions: Path) -> Stage1Metrics:
        path = predictions.parent / layout.METRICS
        return cls(path, read_json(path) if path.is_file() else {})

    @property
    def model_path(self) -> str | None:
        return self.recorded.get("model_path")

    @property
    def model_type(self) -> str | None:
        return self.recorded.get("model_type")

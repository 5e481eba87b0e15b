"""The stage files' readers: a file of the wrong kind is refused at its first bad line, in one line."""

import json

import pytest

from tokenskip.core.errors import UsageError
from tokenskip.data.records import READ_FIELDS, CompressedCoT, FormattedCoT, Stage1Prediction, read_records


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_every_field_a_reader_uses_is_a_field_of_its_record():
    for record, fields in READ_FIELDS.items():
        declared = record.__required_keys__ | record.__optional_keys__
        assert set(fields) <= declared, (record.__name__, set(fields) - declared)


def test_a_complete_file_is_read_as_written(tmp_path):
    lines = [{"id": "1", "question": "q", "compressed_cot": "c", "model_answer": "4", "extra": [1]}]
    assert read_records(_write(tmp_path / "r.jsonl", lines), CompressedCoT, what="compressed CoTs file",
                        made_by="LLMLingua.py") == lines


@pytest.mark.parametrize("record,line,missing", [
    (Stage1Prediction, {"id": "1", "model_output": "x", "messages": [], "prediction": "4"}, "accuracy"),
    (FormattedCoT, {"id": "1", "messages": [], "prediction": "4"}, "cot"),
    (CompressedCoT, {"id": "1", "question": "q", "model_answer": "4"}, "compressed_cot"),
])
def test_a_line_without_a_field_its_reader_uses_is_named(tmp_path, record, line, missing):
    good = {key: "x" for key in READ_FIELDS[record]}
    path = _write(tmp_path / "f.jsonl", [good, line])
    with pytest.raises(UsageError) as caught:
        read_records(path, record, what="stage file", made_by="the stage before")
    message = str(caught.value)
    assert f"{path}:2: lacks {missing};" in message and "\n" not in message

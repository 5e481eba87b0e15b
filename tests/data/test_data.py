import json

import pytest
from conftest import SHARED_DATA

from tokenskip.core.errors import UsageError
from tokenskip.data.benchmarks import load_examples, subsample


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_openai_gsm8k_layout(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "It is 1,000 + 2 = 1,002.\n#### 1,002"}])
    [example] = load_examples("gsm8k", "test", path)
    assert example.id == "gsm8k-test-0"
    assert example.answer == "1002"
    assert example.reference == "It is 1,000 + 2 = 1,002."


def test_tokenskip_layout_keeps_its_id(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"id": "q7", "question": "Q?", "answer": "12", "cot": "6+6=12"}])
    [example] = load_examples("gsm8k", "train", path)
    assert (example.id, example.answer, example.reference) == ("q7", "12", "6+6=12")


def test_math_layout(tmp_path):
    record = {"problem": "P?", "solution": "So $\\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}",
              "subject": "Algebra", "level": 3, "unique_id": "test/algebra/1.json"}
    [example] = load_examples("math", "test", write_jsonl(tmp_path / "m.jsonl", [record]))
    assert example.answer == "\\frac{1}{2}"
    assert example.extra == {"level": 3, "type": "Algebra", "unique_id": "test/algebra/1.json"}


def test_math_answer_falls_back_to_last_boxed(tmp_path):
    record = {"problem": "P?", "solution": "First $\\boxed{1}$, then $\\boxed{x^{2}}$.", "level": 1, "type": "A"}
    [example] = load_examples("math", "train", write_jsonl(tmp_path / "m.jsonl", [record]))
    assert example.answer == "x^{2}"


@pytest.mark.parametrize("record, message", [
    ({"answer": "#### 3"}, "no 'question'"),
    ({"question": "Q?"}, "no 'answer'"),
])
def test_missing_fields_name_the_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "ok", "answer": "#### 1"}, record])
    with pytest.raises(UsageError, match=f"bad.jsonl:2: .*{message}"):
        load_examples("gsm8k", "test", path)


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(UsageError, match="broken.jsonl:2: not valid JSON"):
        load_examples("gsm8k", "test", path)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        load_examples("gsm8k", "test", path)


def test_subsample_matches_original_random_sample():
    import random

    items = list(range(100))
    random.seed(42)
    original = random.sample(items, 10)
    examples = [type("E", (), {"id": i})() for i in items]
    assert [e.id for e in subsample(examples, 10, 42)] == sorted(original)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_shared_gsm8k_and_math500_load():
    gsm8k = load_examples("gsm8k", "test", SHARED_DATA / "gsm8k" / "test.jsonl")
    math500 = load_examples("math", "test", SHARED_DATA / "math-500" / "test.jsonl")
    assert len(gsm8k) == 1319 and len(math500) == 500
    assert all("," not in e.answer for e in gsm8k)
    assert math500[0].extra["level"] in range(1, 6)


def test_default_files_are_found_in_datasets_then_in_the_shared_data_dir(tmp_path, monkeypatch):
    project, shared = tmp_path / "project", tmp_path / "shared" / "data" / "gsm8k"
    (project / "datasets" / "gsm8k").mkdir(parents=True)
    shared.mkdir(parents=True)
    monkeypatch.setenv("TOKENSKIP_DATA_DIR", str(shared.parent))
    write_jsonl(shared / "test.jsonl", [{"question": "shared?", "answer": "#### 1"}])
    monkeypatch.chdir(project)
    [example] = load_examples("gsm8k", "test")
    assert example.question == "shared?"
    write_jsonl(project / "datasets" / "gsm8k" / "test.jsonl", [{"question": "own?", "answer": "#### 2"}])
    [example] = load_examples("gsm8k", "test")
    assert example.question == "own?"


def test_absent_default_file_without_hub_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSKIP_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UsageError, match="download_models.py --datasets"):
        load_examples("gsm8k", "test")

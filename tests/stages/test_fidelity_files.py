"""The stage files against the original TokenSkip's (hemingkx/TokenSkip at ef02f53), field for field.

Stage 3: `fidelity/llamafactory/{demo,synthetic}/` hold stage-2 files and the JSON the original
`get_llamafactory_input.py` wrote from them (`fidelity/build_llamafactory.py` ran it; none of its
code is here). The toolkit's stage 3 on the same files must write the same records, in the same
order (the same seeded γ draws and shuffle), apart from the differences the README's fidelity
table lists: at γ = 1.0 the target is the CoT stage 2 cut out, not the whole output (which already
ends in "The final answer is: ..." and so said it twice), and llama3 inputs end the question with
the newline of llama3's inference prompt.

Stage 1: the keys the original writes to predictions.jsonl and metrics.json (read from its
evaluation.py; its stage 2 and 3 read `messages`, `prompt`, `model_output`, `answer`,
`prediction`, `cot_length`, `accuracy`; it reads `n_samples` back to skip finished runs) are
written with the same types, beside the toolkit's own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from stage_files import SAMPLE_TEST, cli_args, read_lines, write_jsonl

from tokenskip.stages import evaluate, llamafactory

FIXTURES = Path(__file__).parent / "fidelity" / "llamafactory"
SETS = ("demo", "synthetic")
FORMATTED = Path("Original/train/samples/predictions_formatted.jsonl")
MARKER = "\n\nThe final answer is: "


def toolkit_output(fixture: Path, tmp_path: Path, model_type: str) -> tuple[list[dict], bytes]:
    run = tmp_path / "run"
    shutil.copytree(fixture, run, ignore=shutil.ignore_patterns("original_output.json"))
    out = tmp_path / "out.json"
    llamafactory.main(["--input-dir", str(run), "--method", "llmlingua2", "--model-type", model_type,
                       "--seed", "42", "--output-file", str(out)])
    content = out.read_bytes()
    return json.loads(content), content


def question_of(record: dict, questions: list[str]) -> str:
    """The question an original record was built from (its input is the question, then a γ tag)."""
    matching = [q for q in questions if record["input"] == q or record["input"].startswith(q + "<|eot_id|>")]
    assert matching, record["input"][:80]
    return max(matching, key=len)


@pytest.mark.parametrize("name", SETS)
def test_stage3_records_are_the_originals_field_for_field(name, tmp_path):
    fixture = FIXTURES / name
    original_bytes = (fixture / "original_output.json").read_bytes()
    original = json.loads(original_bytes)
    formatted = read_lines(fixture / FORMATTED)
    by_question = {row["messages"][0]["content"]: row for row in formatted}
    records, content = toolkit_output(fixture, tmp_path, "qwen")

    assert len(records) == len(original) == len(formatted)
    rewritten = 0
    for ours, theirs in zip(records, original):  # the same order: the same γ draws and shuffle
        assert set(ours) == set(theirs) == {"instruction", "input", "output"}
        assert ours["instruction"] == theirs["instruction"]
        assert ours["input"] == theirs["input"]
        if "<|eot_id|>" in theirs["input"]:  # γ < 1: the compressed CoT and the model's answer
            assert ours["output"] == theirs["output"]
            continue
        source = by_question[question_of(theirs, list(by_question))]  # γ = 1.0: the difference, exactly
        assert theirs["output"] == f"{source['model_output']}{MARKER}$\\boxed{{{source['prediction']}}}$"
        assert ours["output"] == f"{source['cot']}{MARKER}$\\boxed{{{source['prediction']}}}$"
        rewritten += source["cot"] != source["model_output"]
    # the synthetic outputs end in the final-answer sentence; the demo's drawn at γ = 1.0 happen not to
    assert rewritten > 0 or name == "demo"
    # the file itself: the original's JSON layout (indent 1, UTF-8), with a final newline
    expected = [ours if "<|eot_id|>" in theirs["input"] else {**theirs, "output": ours["output"]}
                for ours, theirs in zip(records, original)]
    assert original_bytes == json.dumps(original, ensure_ascii=False, indent=1).encode()
    assert content == (json.dumps(expected, ensure_ascii=False, indent=1) + "\n").encode()


def test_stage3_llama3_inputs_add_the_inference_prompts_newline(tmp_path):
    """The original's stage 3 wrote the same inputs for every model; llama3's inference prompt has
    a newline after the question, and the toolkit's training inputs follow the prompt."""
    fixture = FIXTURES / "synthetic"
    original = json.loads((fixture / "original_output.json").read_text())
    questions = [row["messages"][0]["content"] for row in read_lines(fixture / FORMATTED)]
    records, _ = toolkit_output(fixture, tmp_path, "llama3")
    for ours, theirs in zip(records, original, strict=True):
        question = question_of(theirs, questions)
        assert ours["input"] == question + "\n" + theirs["input"][len(question):]
        assert ours["instruction"] == theirs["instruction"]


# ---------------------------------------------------------------- stage 1


# What the original's evaluation.py writes (its process_gsm8k_test / process_math_test records,
# plus reference, prompt, model_output, prediction, cot_length, accuracy), and what it reads back.
ORIGINAL_PREDICTION_KEYS = {"dataset", "id", "messages", "answer", "reference", "prompt", "model_output",
                            "prediction", "cot_length", "accuracy"}
ORIGINAL_MATH_KEYS = ORIGINAL_PREDICTION_KEYS | {"level", "type"}
ORIGINAL_METRIC_KEYS = {"n_samples", "accuracy", "avg_cot_length", "sample_latency"}
TYPES = {"dataset": str, "id": str, "messages": list, "answer": str, "prompt": str, "model_output": str,
         "prediction": str, "cot_length": int, "accuracy": bool}


def check_stage1(samples: Path, keys: set[str]) -> list[dict]:
    records = read_lines(samples / "predictions.jsonl")
    metrics = json.loads((samples / "metrics.json").read_text())
    for record in records:
        assert keys <= set(record)
        assert all(isinstance(record[key], kind) for key, kind in TYPES.items()), record
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert record["messages"][1]["content"] == ""  # the assistant turn blanked, as the original does
    assert ORIGINAL_METRIC_KEYS <= set(metrics)
    assert isinstance(metrics["n_samples"], int) and metrics["n_samples"] == len(records)
    assert metrics["accuracy"] == sum(r["accuracy"] for r in records) / len(records)
    assert metrics["avg_cot_length"] == sum(r["cot_length"] for r in records) / len(records)
    assert metrics["grader"] == "tokenskip" and "TokenSkip's own grading" in metrics["grader_rules"]
    return records


def test_stage1_writes_the_originals_fields_gsm8k(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3"))
    records = check_stage1(tmp_path / "tiny" / "Original" / "test" / "samples", ORIGINAL_PREDICTION_KEYS)
    # on purpose: the id is the dataset's (the original's is gsm8k-test-test-{i}-0) and the reference
    # is the dataset's solution text (the original's, a list with its rendering of it)
    assert all(r["dataset"] == "gsm8k-test" and r["id"].startswith("gsm8k-test-") for r in records)
    gold = {json.loads(line)["question"]: json.loads(line)["answer"] for line in SAMPLE_TEST.read_text().splitlines()}
    assert all(r["reference"] == gold[r["messages"][0]["content"]].split("####")[0].strip() for r in records)


def test_stage1_writes_the_originals_fields_math(tiny_lm_dir, tmp_path):
    data = tmp_path / "math.jsonl"
    write_jsonl(data, [{"problem": f"What is {i} + {i}?", "solution": f"It is $\\boxed{{{2 * i}}}$.",
                        "answer": str(2 * i), "type": "Algebra", "level": 1, "unique_id": f"test/algebra/{i}.json"}
                       for i in range(3)])
    args = cli_args(tiny_lm_dir, tmp_path, "--benchmark", "math")
    args[args.index("--data-path") + 1] = str(data)
    evaluate.main(args)
    records = check_stage1(tmp_path / "tiny" / "Original" / "test" / "samples", ORIGINAL_MATH_KEYS)
    # on purpose: `prediction` is a string (the answers graded, joined), where the original wrote the list
    assert all(r["dataset"] == "math-test" and r["type"] == "Algebra" and r["level"] == 1 for r in records)

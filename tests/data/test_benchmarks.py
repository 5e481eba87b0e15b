"""Reasoning-model benchmarks: AIME 2024/2025 and GPQA-Diamond, any JSONL by field name, and the
multiple-choice grader. Every fixture is written here, in the hub's layouts (no hub, no real
benchmark question: GPQA's terms ask that its questions stay off the web)."""

import json
import sys
import types

import pytest

from tokenskip.core.errors import UsageError
from tokenskip.data import benchmarks as data
from tokenskip.data.benchmarks import load_examples
from tokenskip.evaluation.config import LEGACY_SETTINGS, EvalConfig, RunSettings
from tokenskip.grading.graders import GRADERS_BY_FORMAT, Grader, GradeRequest
from tokenskip.grading.parsing import extract_choice
from tokenskip.models import hub
from tokenskip.stages import download, evaluate


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# HuggingFaceH4/aime_2024 and yentinglin/aime_2025: id, problem, solution, answer, url, year
AIME_HUB = [
    {"id": 60, "problem": "Find the remainder when $7^{2024}$ is divided by $100$.",
     "solution": "Powers of 7 repeat mod 100 with period 4, so the remainder is $\\boxed{1}$.", "answer": "001",
     "url": "https://example.org/1", "year": "2024"},
    {"id": 61, "problem": "How many positive divisors does $720$ have?", "solution": "$720 = 2^4 3^2 5$: 30.",
     "answer": "30", "url": "https://example.org/2", "year": "2024"},
]

# Idavidrein/gpqa, config gpqa_diamond (a few of its many columns)
GPQA_HUB = [
    {"Record ID": f"rec{i:03d}", "Question": f"Which particle is number {i}?", "Correct Answer": f"right {i}",
     "Incorrect Answer 1": f"wrong {i}.1", "Incorrect Answer 2": f"wrong {i}.2", "Incorrect Answer 3": f"wrong {i}.3",
     "Explanation": f"Because {i}.", "High-level domain": "Physics", "Subdomain": "Particle physics"}
    for i in range(12)
]


def gpqa_file(tmp_path, records=GPQA_HUB):
    return write_jsonl(tmp_path / "gpqa.jsonl", records)


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=60.0, workers=1) as grader:  # generous: the worker may start slowly under load
        yield grader


# ---------------------------------------------------------------- the table


def test_every_benchmark_has_a_folder_a_grader_and_its_hub_source():
    assert data.BENCHMARKS == ("gsm8k", "math", "aime24", "aime25", "gpqa")
    for name, benchmark in data.BENCHMARK_TABLE.items():
        assert benchmark.answer_format in GRADERS_BY_FORMAT
        assert set(benchmark.hub) <= set(data.SPLITS)
    assert data.hub_split("aime24", "test") == data.HubSplit("HuggingFaceH4/aime_2024", None, "train")
    assert data.hub_split("aime25", "test") == data.HubSplit("yentinglin/aime_2025", None, "train")
    assert data.hub_split("gpqa", "test") == data.HubSplit("Idavidrein/gpqa", "gpqa_diamond", "train")
    assert data.hub_split("math", "train") == data.HubSplit("DigitalLearningGmbH/MATH-lighteval", None, "train")
    assert data.answer_format("gpqa") == "choice"
    assert {data.answer_format(name) for name in ("math", "aime24", "aime25")} == {"math"}
    assert data.answer_format("gsm8k") == "single"  # TokenSkip grades GSM8K on the last answer stated
    # every format is judged by the same grader names, so --grader means one thing everywhere
    assert len({tuple(graders) for graders in GRADERS_BY_FORMAT.values()}) == 1


def test_a_split_the_benchmark_lacks_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSKIP_DATA_DIR", raising=False)
    with pytest.raises(UsageError, match=r"^aime24 has no train split on the hub \(only test\): use --data-type "
                                         r"test, or pass your own train file with --data-path$"):
        load_examples("aime24", "train")


def test_benchmarks_come_from_the_hub_by_name(tmp_path, monkeypatch):
    asked = []

    def load_dataset(repo, config, split):
        asked.append((repo, config, split))
        return {"HuggingFaceH4/aime_2024": AIME_HUB, "Idavidrein/gpqa": GPQA_HUB[:2],
                "DigitalLearningGmbH/MATH-lighteval": [
                    {"problem": "1+1?", "level": "Level 1", "type": "Algebra", "solution": "$\\boxed{2}$"}]}[repo]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSKIP_DATA_DIR", raising=False)
    assert [e.answer for e in load_examples("aime24", "test")] == ["1", "30"]
    assert [e.id for e in load_examples("gpqa", "test")] == ["rec000", "rec001"]
    assert load_examples("math", "train")[0].answer == "2"  # stage 1 on MATH train
    assert asked == [("HuggingFaceH4/aime_2024", None, "train"), ("Idavidrein/gpqa", "gpqa_diamond", "train"),
                     ("DigitalLearningGmbH/MATH-lighteval", None, "train")]
    assert data.data_source("gpqa", "test") == "hub:Idavidrein/gpqa"


def test_a_gated_hub_dataset_says_how_to_get_access(tmp_path, monkeypatch):
    def refuse(repo, config, split):
        raise PermissionError("gated")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=refuse))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSKIP_DATA_DIR", raising=False)
    with pytest.raises(UsageError, match=r"gated: accept its terms at https://huggingface.co/datasets/Idavidrein/gpqa "
                                         r"and set HF_TOKEN\); run `python download_models.py --datasets gpqa`"):
        load_examples("gpqa", "test")


# ---------------------------------------------------------------- AIME


def test_aime_hub_layout(tmp_path):
    first, second = load_examples("aime24", "test", write_jsonl(tmp_path / "aime.jsonl", AIME_HUB))
    assert (first.id, first.answer, first.extra) == ("60", "1", {"year": "2024"})  # "001" is the integer 1
    assert first.question == AIME_HUB[0]["problem"] and "period 4" in first.reference
    assert (second.id, second.answer) == ("61", "30")


@pytest.mark.parametrize("record, answer", [
    ({"ID": "2024-I-1", "Problem": "P?", "Solution": "...", "Answer": 204}, "204"),  # capitalized, integer answer
    ({"question": "P?", "answer": "7"}, "7"),
    ({"problem": "P?", "solution": "so it is $\\boxed{073}$"}, "73"),  # no answer field: the boxed one
])
def test_aime_layouts_users_keep(tmp_path, record, answer):
    [example] = load_examples("aime25", "test", write_jsonl(tmp_path / "a.jsonl", [record]))
    assert (example.question, example.answer) == ("P?", answer)


@pytest.mark.parametrize("record, message", [
    ({"problem": "P?", "answer": "\\frac{1}{2}"}, r"a.jsonl:1: AIME answer '\\\\frac\{1\}\{2\}' is not an integer "
                                                  r"from 0 to 999"),
    ({"problem": "P?", "answer": "1000"}, "not an integer from 0 to 999"),
    ({"text": "P?", "answer": "1"}, r"no 'problem' \(or 'question'\) field; fields are \['answer', 'text'\]"),
    ({"problem": "P?"}, "no 'answer' and no \\\\boxed"),
])
def test_aime_errors_are_one_line(tmp_path, record, message):
    with pytest.raises(UsageError, match=message):
        load_examples("aime24", "test", write_jsonl(tmp_path / "a.jsonl", [record]))


def test_aime_outputs_grade_correctly(tmp_path, grader):
    examples = load_examples("aime24", "test", write_jsonl(tmp_path / "aime.jsonl", AIME_HUB))
    outputs = [
        "The cycle has length 4.\n\nThe final answer is: $\\boxed{1}$",  # right, gold written 001
        "So there are 30 divisors.\n\nThe final answer is: $\\boxed{30}$",  # right
        "The cycle has length 4.\n\nThe final answer is: $\\boxed{49}$",  # wrong
        "I count $5 \\cdot 3 \\cdot 2$ divisors, so $\\boxed{31}$",  # wrong
    ]
    requests = [GradeRequest(output, example.answer, example.question, data.answer_format("aime24"))
                for output, example in zip(outputs, [*examples, *examples])]
    grades = grader.grade(requests)
    assert [g.correct for g in grades] == [True, True, False, False]
    assert [g.verdicts["math-verify"] for g in grades] == [True, True, False, False]
    assert [g.prediction for g in grades] == ["1", "30", "49", "31"]


# ---------------------------------------------------------------- GPQA


def option_lines(question: str) -> dict[str, str]:
    return {line[0]: line[3:] for line in question.split("\n\n", 1)[1].splitlines()}


def test_gpqa_options_are_lettered_with_the_gold_letter(tmp_path):
    examples = load_examples("gpqa", "test", gpqa_file(tmp_path))
    for record, example in zip(GPQA_HUB, examples):
        assert example.id == record["Record ID"]
        assert example.question.startswith(record["Question"] + "\n\nA) ")
        options = option_lines(example.question)
        assert list(options) == ["A", "B", "C", "D"]
        assert options[example.answer] == record["Correct Answer"]
        # lighteval's placement: the incorrect answers keep their order around the correct one
        assert [o for o in options.values() if o != record["Correct Answer"]] == [
            record[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
        assert example.reference == record["Explanation"]
        assert example.extra == {"domain": "Physics", "subdomain": "Particle physics"}
    # a fixed seed, not always the same place: pinned, since a change would move every gold letter
    assert "".join(e.answer for e in examples) == "".join(
        "ABCD"[data.choice_position(r["Record ID"])] for r in GPQA_HUB)
    assert len({e.answer for e in examples}) > 1


def test_gpqa_order_is_the_same_on_every_call_and_for_any_subset_or_order(tmp_path):
    first = load_examples("gpqa", "test", gpqa_file(tmp_path))
    again = load_examples("gpqa", "test", gpqa_file(tmp_path))
    assert [(e.question, e.answer) for e in first] == [(e.question, e.answer) for e in again]
    reordered = load_examples("gpqa", "test", write_jsonl(tmp_path / "r.jsonl", GPQA_HUB[::-1][:5]))
    by_id = {e.id: (e.question, e.answer) for e in first}
    assert all(by_id[e.id] == (e.question, e.answer) for e in reordered)
    assert data.content_hash(first) == data.content_hash(again)


def test_gpqa_pinned_letters():
    # the drawn positions themselves, so that no refactoring moves a gold letter unnoticed
    assert [data.choice_position(f"rec{i:03d}") for i in range(12)] == PINNED_POSITIONS


PINNED_POSITIONS = [1, 0, 1, 3, 1, 2, 2, 0, 2, 2, 3, 3]


def test_gpqa_lower_case_layout_is_the_same_question(tmp_path):
    lower = [{"record_id": r["Record ID"], "question": r["Question"], "correct_answer": r["Correct Answer"],
              **{f"incorrect_answer_{i}": r[f"Incorrect Answer {i}"] for i in (1, 2, 3)}} for r in GPQA_HUB]
    hub = load_examples("gpqa", "test", gpqa_file(tmp_path))
    own = load_examples("gpqa", "test", write_jsonl(tmp_path / "lower.jsonl", lower))
    assert [(e.id, e.question, e.answer) for e in own] == [(e.id, e.question, e.answer) for e in hub]


def test_gpqa_file_already_lettered_is_read_as_it_is(tmp_path):
    record = {"id": "q1", "question": "Which?\n\nA) x\nB) y\nC) z\nD) w", "answer": "(c)"}
    [example] = load_examples("gpqa", "test", write_jsonl(tmp_path / "mc.jsonl", [record]))
    assert (example.id, example.question, example.answer) == ("q1", record["question"], "C")


def test_gpqa_record_without_its_options_is_one_line(tmp_path):
    record = {"Question": "Q?", "Correct Answer": "x", "Incorrect Answer 1": "y"}
    with pytest.raises(UsageError, match=r"g.jsonl:1: GPQA record needs 'Question', 'Correct Answer' and "
                                         r"'Incorrect Answer 1'-'3'.*fields are \['Correct Answer', "):
        load_examples("gpqa", "test", write_jsonl(tmp_path / "g.jsonl", [record]))


@pytest.mark.parametrize("output, letter", [
    ("... so the particle is the second one.\n\nThe final answer is: $\\boxed{B}$", "B"),
    ("The answer is (C).", "C"),
    ("Thinking it over, the answer is (c)", "C"),  # lower case in parentheses
    ("Answer: d", "D"),  # lower case alone at the end of its line
    ("Option A looks tempting and B is close, but A fails the test.\n\nAnswer: C", "C"),  # distractors first
    ("\\boxed{A} was my first guess; checking again, \\boxed{D}", "D"),  # the last box
    ("\\boxed{\\text{(B)}}", "B"),
    ("$\\boxed{C) right 3}$", "C"),  # the letter with its option's text
    ("**Final Answer:** (b)", "B"),
    ("The correct option is: D", "D"),
    ("**Answer**: A", "A"),
    ("Not the answer is...; the answer is not clear. The answer is B. So the answer is not obvious", "B"),
    ("B is wrong and A is wrong.\n\n**C**", "C"),  # a last line holding only a letter
    ("the answer is a bit larger than 3", ""),  # "a" the word, not option A
    ("I think B is right because it fits.", ""),  # a letter in passing is no stated answer
    ("So $x = \\boxed{B^2}$", ""),  # a boxed expression is no option
    ("\\boxed{4}", ""),
    ("The answer is E.", ""),  # not one of the four options
    ("", ""),
])
def test_extract_choice(output, letter):
    assert extract_choice(output) == letter


@pytest.mark.parametrize("hostile", [
    "answer" + " " * 200_000 + "x",  # a long run after a phrase that never completes
    "(" + "*" * 5_000 + "!",  # stars that a non-possessive pattern could split exponentially many ways
    "Answer: " * 100_000,  # many phrases, none followed by a letter
    "\\boxed{" + "(" * 100_000 + "}",
])
def test_extract_choice_stays_linear_on_hostile_outputs(hostile):
    assert extract_choice(hostile) == ""  # returns at all: a backtracking blow-up would hang here


def test_gpqa_outputs_grade_correctly(tmp_path, grader):
    examples = load_examples("gpqa", "test", gpqa_file(tmp_path))[:3]
    gold = [e.answer for e in examples]
    wrong = ["ABCD"[("ABCD".index(g) + 1) % 4] for g in gold]
    outputs = [
        f"Both {wrong[0]} and {gold[0]} fit at first.\n\nThe final answer is: $\\boxed{{{gold[0]}}}$",
        f"Checking each option, the answer is ({gold[1].lower()})",
        f"The final answer is: $\\boxed{{{wrong[2]}}}$",
        f"Option {gold[0]} is tempting, but the answer is {wrong[0]}.",
        "I cannot decide.",
    ]
    requests = [GradeRequest(output, example.answer, example.question, "choice")
                for output, example in zip(outputs, [*examples, examples[0], examples[0]])]
    grades = grader.grade(requests)
    assert [g.correct for g in grades] == [True, True, False, False, False]
    assert [g.prediction for g in grades] == [gold[0], gold[1], wrong[2], wrong[0], ""]
    assert grades[0].verdicts == {"tokenskip": True, "math-verify": True}  # Math-Verify reads the box too
    assert grades[2].verdicts == {"tokenskip": False, "math-verify": False}
    assert all(not g.errors and not g.timeouts for g in grades)


def test_a_letter_is_not_graded_as_a_math_answer():
    # the same output against the same gold, judged by the math graders: the letter table matters
    with Grader(graders=["tokenskip"]) as grader:
        math, choice = grader.grade([GradeRequest("The answer is (C).", "C"),
                                     GradeRequest("The answer is (C).", "C", answer_format="choice")])
    assert (math.prediction, choice.prediction) == ("(C)", "C")
    assert choice.correct


def test_unknown_answer_format_is_refused():
    with Grader(graders=["tokenskip"]) as grader, pytest.raises(UsageError, match="unknown answer format 'letters'"):
        grader.grade([GradeRequest("x", "A", answer_format="letters")])


# ---------------------------------------------------------------- any JSONL by field name


def test_any_jsonl_by_field_names(tmp_path):
    records = [{"uid": "a", "prompt": "2+2?", "target": "4"},
               {"uid": "b", "prompt": "Half of 1?", "target": "We halve it: $\\boxed{\\frac{1}{2}}$"},
               {"uid": "c", "prompt": "3 x 4?", "target": "3 x 4 = 12\n#### 12"}]
    path = write_jsonl(tmp_path / "mine.jsonl", records)
    examples = load_examples("math", "test", path, question_field="prompt", answer_field="target")
    assert [(e.id, e.question, e.answer) for e in examples] == [
        ("math-test-0", "2+2?", "4"), ("math-test-1", "Half of 1?", "\\frac{1}{2}"), ("math-test-2", "3 x 4?", "12")]
    assert examples[1].reference == records[1]["target"] and examples[2].reference == "3 x 4 = 12"


def test_any_jsonl_for_multiple_choice_and_aime(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [{"id": "x", "q": "Which?\nA) 1\nB) 2\nC) 3\nD) 4", "gold": "b"}])
    [example] = load_examples("gpqa", "test", path, question_field="q", answer_field="gold")
    assert (example.id, example.answer) == ("x", "B")
    path = write_jsonl(tmp_path / "aime.jsonl", [{"q": "P?", "gold": "042"}])
    assert load_examples("aime25", "test", path, question_field="q", answer_field="gold")[0].answer == "42"


@pytest.mark.parametrize("flags, message", [
    ({"question_field": "text", "answer_field": "target"},
     r"^.*f.jsonl:1: record has no field 'text' \(--question-field\); its fields are \['prompt', 'target'\]$"),
    ({"question_field": "prompt", "answer_field": "gold"},
     r"^.*f.jsonl:1: record has no field 'gold' \(--answer-field\); its fields are \['prompt', 'target'\]$"),
    ({"question_field": "prompt"},  # the other field defaults to "answer"
     r"record has no field 'answer' \(--answer-field\)"),
])
def test_any_jsonl_missing_field_is_one_line(tmp_path, flags, message):
    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "Q?", "target": "1"}])
    with pytest.raises(UsageError, match=message) as error:
        load_examples("math", "test", path, **flags)
    assert "\n" not in str(error.value)


def test_any_jsonl_multiple_choice_needs_a_letter(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "Q?", "target": "right 3"}])
    with pytest.raises(UsageError, match=r"gpqa answers are option letters \(A, B, C, D\), but 'target' holds "
                                         r"'right 3'; name the field holding the letter"):
        load_examples("gpqa", "test", path, question_field="prompt", answer_field="target")


def test_evaluation_flags():
    args = evaluate.build_parser().parse_args(["--benchmark", "gpqa", "--question-field", "q", "--answer-field", "a"])
    config = EvalConfig.from_args(args)
    assert (config.benchmark, config.question_field, config.answer_field) == ("gpqa", "q", "a")
    for name in ("aime24", "aime25"):
        assert evaluate.build_parser().parse_args(["--benchmark", name]).benchmark == name
    # run.json files written before these settings existed still resume
    new = {"question_field", "answer_field"}
    assert new <= set(RunSettings.__dataclass_fields__) and new <= set(LEGACY_SETTINGS)


# ---------------------------------------------------------------- regrade and download


def test_regrade_a_gpqa_predictions_file(tmp_path):
    [example] = load_examples("gpqa", "test", gpqa_file(tmp_path, GPQA_HUB[:1]))
    wrong = "ABCD"[("ABCD".index(example.answer) + 2) % 4]

    def record(i, output):
        return {"dataset": "gpqa-test", "id": f"{example.id}/{i}", "answer": example.answer,
                "messages": [{"role": "user", "content": example.question}, {"role": "assistant", "content": ""}],
                "model_output": output, "prediction": "", "cot_length": 10, "accuracy": False, "grades": {}}

    path = write_jsonl(tmp_path / "received.jsonl", [
        record(0, f"Reasoning.\n\nThe final answer is: $\\boxed{{{example.answer}}}$"),
        record(1, f"The answer is ({example.answer.lower()})."),
        record(2, f"The final answer is: $\\boxed{{{wrong}}}$"),
    ])
    metrics = evaluate.main(["--regrade", str(path)])[0]
    regraded = [json.loads(line) for line in (tmp_path / "received.regraded.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in regraded] == [True, True, False]
    assert [r["prediction"] for r in regraded] == [example.answer, example.answer, wrong]
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["n_invalid"] == 0
    assert data.record_answer_format(regraded[0]) == "choice"
    assert data.record_answer_format({"dataset": "gsm8k-train"}) == "single"
    assert data.record_answer_format({"dataset": "math-test"}) == data.record_answer_format({}) == "math"


def test_download_writes_the_new_benchmarks_evaluation_reads(tmp_path, monkeypatch):
    rows = {("HuggingFaceH4/aime_2024", None, "train"): AIME_HUB,
            ("yentinglin/aime_2025", None, "train"): [{"problem": "P?", "answer": "70"}],
            ("Idavidrein/gpqa", "gpqa_diamond", "train"): GPQA_HUB[:3]}
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda repo, config, split: rows[repo, config, split]))
    monkeypatch.setattr(hub, "repo_files", lambda repo: pytest.fail("no model was asked for"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENSKIP_DATA_DIR", raising=False)
    download.main(["--datasets", "aime24", "aime25", "gpqa"])
    assert sorted(p.relative_to(tmp_path / "datasets").as_posix() for p in (tmp_path / "datasets").rglob("*.jsonl")) \
        == ["aime-2024/test.jsonl", "aime-2025/test.jsonl", "gpqa-diamond/test.jsonl"]
    assert [e.answer for e in load_examples("aime24", "test")] == ["1", "30"]
    assert load_examples("aime25", "test")[0].answer == "70"
    from_disk = load_examples("gpqa", "test")
    assert [e.answer for e in from_disk] == [e.answer for e in load_examples("gpqa", "test", gpqa_file(tmp_path,
                                                                                                     GPQA_HUB[:3]))]


def test_download_plan_for_named_benchmarks():
    def plan(*argv):
        items, _ = download.make_plan(download.build_parser().parse_args([*argv, "--base-dir", "m"]))
        return [(item.source, item.config, item.split, str(item.target), item.gated) for item in items]

    assert plan("--datasets", "gpqa") == [("Idavidrein/gpqa", "gpqa_diamond", "train",
                                           "datasets/gpqa-diamond/test.jsonl", True)]
    assert [source for source, *_ in plan("--datasets", "all")] == [
        "openai/gsm8k", "openai/gsm8k", "HuggingFaceH4/MATH-500", "DigitalLearningGmbH/MATH-lighteval",
        "HuggingFaceH4/aime_2024", "yentinglin/aime_2025", "Idavidrein/gpqa"]
    with pytest.raises(UsageError, match="invalid choice: 'aime'"):
        download.main(["--datasets", "aime", "--dry-run"])

"""Answer equivalence, the Math-Verify grader, the time-limited worker pool, and the gold check
that grading the datasets' own reference solutions gives (nearly) 100%.

`is_equivalent` and `quick_verdict` are the "tokenskip-lenient" grader's equivalence; the default
"tokenskip" grader (TokenSkip's own rules) is checked case for case in test_fidelity.py."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.core.errors import UsageError
from tokenskip.data.benchmarks import gsm8k_final_answer, gsm8k_solution_as_output
from tokenskip.grading import equivalence
from tokenskip.grading.equivalence import is_equivalent, math_verify_equivalent, quick_verdict
from tokenskip.grading.graders import Grade, Grader, GradeRequest

DATA = ROOT.parent / "shared" / "data"
TIMEOUT_S = 3.0
HOPELESS = r"so the result is \boxed{9^{9^{9^{9^{9}}}}}"  # sympy and Math-Verify both try to evaluate it
TOO_DEEP = r"\boxed{" + "(" * 300 + "1" + ")" * 300 + "}"  # overflows the LaTeX parser's recursion


@pytest.fixture(scope="module")
def grader():
    with Grader(timeout=TIMEOUT_S, workers=2) as shared:
        yield shared


def symbolic_request() -> GradeRequest:
    """A request that neither grader can settle in-process, so it needs a worker."""
    return GradeRequest(r"$\boxed{\frac{\sqrt{2}}{2}}$", r"\frac{1}{\sqrt{2}}", question="Simplify.")


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("72", "72.0"),
        ("72", "72.0004"),  # within the absolute tolerance of 1e-3
        ("1000", "1,000"),
        ("0.5", r"\frac{1}{2}"),
        ("50%", "0.5"),
        ("0.2", "20"),  # DeepSeek's percentage leniency: 20 may mean 20%
        (r"1\frac{4}{5}", r"\frac{9}{5}"),  # a mixed number
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),  # needs sympy's LaTeX parser (antlr 4.11)
        (r"2\sqrt{2}", r"\sqrt{8}"),
        ("sqrt(2)/2", r"\frac{\sqrt{2}}{2}"),  # plain text goes to parse_expr
        ("p-q", "-q + p"),
        ("(1,2)", r"\left( 1, 2 \right)"),
        (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)"),
        ("(0,0.5]", r"(0,\frac{1}{2}]"),
        (r"(-\infty,2)\cup(3,\infty)", r"(3, \infty) \cup (-\infty, 2)"),
        (r"\begin{bmatrix}0.2\\-3.6\end{bmatrix}", r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}"),
        ("x=3", "3"),
        ("3", "x = 3"),
        ("2x+1=y", "y = 2x + 1"),
        ("x+y=1", "2x + 2y = 2"),
        ("5x-7y+11z+4=0", "-5x + 7y - 11z - 4 = 0"),
        (r"\{-2,1+\sqrt{5},1-\sqrt{5}\}", r"\{1\pm\sqrt{5},-2\}"),
        (r"3\text{ and }5", "5, 3"),
    ],
)
def test_equivalent_answers(prediction, reference):
    assert is_equivalent(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("3", "4"),
        ("72", "72.01"),
        ("0.5", r"\frac{1}{3}"),
        (r"\frac{1}{2}", "50"),  # the percentage leniency is for two decimals only
        (r"\sqrt{2}", "1.5"),
        ("x+1", "x-1"),
        ("52_8", "52"),  # a base-8 numeral is not 52
        ("(1,2)", "(2,1)"),
        ("(1,2)", "(1,2,3)"),
        ("[0,1)", "(0,1)"),  # interval ends matter
        (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1&2\end{pmatrix}"),
        ("x=4", "3"),
        ("y=2x+1", "y=2x-1"),
        ("Evelyn", r"\text{Navin}"),
        ("2,1", "1,2"),  # order matters unless the question says otherwise
        ("", "0"),
        ("0", ""),
    ],
)
def test_different_answers(prediction, reference):
    assert not is_equivalent(prediction, reference)


def test_comma_separated_answers_are_unordered_when_the_question_says_so():
    question = "Enter all the solutions, separated by commas."
    assert is_equivalent("2,1", "1, 2", question)
    assert not is_equivalent("2,1,3", "1, 2", question)
    assert is_equivalent("(3,4),(1,2)", "(1, 2), (3, 4)", question)
    assert not is_equivalent("(4,3),(1,2)", "(1, 2), (3, 4)", question)  # the pairs themselves stay ordered


def test_plain_numbers_are_settled_without_sympy(monkeypatch):
    def no_sympy(text):
        raise AssertionError(f"sympy was asked to parse {text!r}")

    monkeypatch.setattr(equivalence, "_to_sympy", no_sympy)
    assert not is_equivalent("3", "4")
    assert is_equivalent("1.5", r"\frac{3}{2}")
    assert quick_verdict("12", "13") is False
    assert quick_verdict(r"\sqrt{4}", "2") is None  # undecided: needs sympy


def test_a_broken_latex_parser_is_reported_not_graded_as_wrong(monkeypatch):
    import sympy.parsing.latex

    def missing_antlr(text, **options):
        raise ImportError("LaTeX parsing requires the antlr4 Python package")

    monkeypatch.setattr(sympy.parsing.latex, "parse_latex", missing_antlr)
    equivalence.latex_parser.cache_clear()
    try:
        with pytest.raises(UsageError, match=re.escape("antlr4-python3-runtime==4.11.0")):
            is_equivalent(r"\sqrt{4}", "2")
    finally:
        equivalence.latex_parser.cache_clear()


def test_math_verify_grader():
    assert math_verify_equivalent(r"Hence the answer is $\boxed{\frac{1}{2}}$.", "0.5")
    point = r"\left( 3, \frac{\pi}{2} \right)"
    assert math_verify_equivalent(rf"$\boxed{{{point}}}$", point)
    assert not math_verify_equivalent(r"$\boxed{3}$", "4")


# ---------------------------------------------------------------- the Grader and its pool


def test_grader_reports_prediction_and_one_verdict_per_grader(grader):
    first, second = grader.grade([symbolic_request(), GradeRequest(r"\boxed{7}", "8")])
    assert first == Grade(r"\frac{\sqrt{2}}{2}", True, {"tokenskip": True, "math-verify": True})
    assert second.prediction == "7"
    assert second.verdicts == {"tokenskip": False, "math-verify": False}


def test_the_primary_grader_decides_correct():
    request = GradeRequest(r"so $\boxed{0.2}$", "20")  # only DeepSeek's lineage reads 20 as 20%
    with Grader("math-verify", timeout=TIMEOUT_S) as verify_first:
        (grade,) = verify_first.grade([request])
    assert grade.verdicts == {"tokenskip": True, "math-verify": False}
    assert grade.correct is False


@pytest.mark.parametrize(
    ("name", "requests"),
    [
        ("tokenskip", [  # TokenSkip's grading settles plain numbers without sympy
            GradeRequest(r"The final answer is: $\boxed{72}$", "72"),
            GradeRequest("so it is 0.5", "50"),  # 0.5 may be 50%
            GradeRequest(r"\boxed{1,000}", "1001"),
        ]),
        ("tokenskip-lenient", [  # the lenient grader also fractions of integers
            GradeRequest(r"The final answer is: $\boxed{72}$", "72"),
            GradeRequest("so it is 0.5", r"\frac{1}{2}"),
            GradeRequest(r"\boxed{1,000}", "1001"),
        ]),
    ],
)
def test_cheap_requests_start_no_worker(name, requests):
    with Grader(name, graders=[name]) as cheap:
        grades = cheap.grade(requests)
        assert [grade.correct for grade in grades] == [True, True, False]
        assert cheap._pool._workers == []


def test_hopeless_answer_times_out_and_the_next_request_still_grades(grader):
    grader.grade([symbolic_request()])  # warm workers, so the timing below is the check's alone
    started = time.monotonic()
    (hopeless,) = grader.grade([GradeRequest(HOPELESS, "1")])
    elapsed = time.monotonic() - started
    assert hopeless.verdicts == {"tokenskip": False, "math-verify": False}
    assert set(hopeless.timeouts) == {"tokenskip", "math-verify"}
    assert elapsed < TIMEOUT_S + 1.5
    (after,) = grader.grade([symbolic_request()])  # on replacement workers
    assert after.verdicts == {"tokenskip": True, "math-verify": True}
    assert after.timeouts == ()


def test_a_crash_inside_a_check_is_an_error_not_a_timeout():
    with Grader(graders=["tokenskip"], timeout=TIMEOUT_S) as tokenskip_only:
        crashed, fine = tokenskip_only.grade([GradeRequest(TOO_DEEP, "1"), symbolic_request()])
    assert crashed.correct is False
    assert crashed.timeouts == ()
    assert crashed.errors["tokenskip"].startswith("RecursionError")
    assert fine.correct is True


def test_a_worker_killed_mid_check_is_an_error_and_is_replaced(grader):
    grader.grade([symbolic_request()])

    def kill_busy_workers():
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            busy = [worker for worker in list(grader._pool._workers) if worker.job is not None]
            if busy:
                for worker in busy:
                    worker.process.kill()
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_busy_workers)
    killer.start()
    (killed,) = grader.grade([GradeRequest(HOPELESS, "1")])
    killer.join()
    assert killed.verdicts == {"tokenskip": False, "math-verify": False}
    assert killed.errors and all("died" in message for message in killed.errors.values())
    assert set(killed.errors) | set(killed.timeouts) == {"tokenskip", "math-verify"}
    (after,) = grader.grade([symbolic_request()])
    assert after.verdicts == {"tokenskip": True, "math-verify": True}


def test_close_leaves_no_worker_running():
    with Grader("math-verify", graders=["math-verify"], workers=2) as pool_user:
        pool_user.grade([symbolic_request(), symbolic_request()])
        processes = [worker.process for worker in pool_user._pool._workers]
        assert len(processes) == 2
    assert all(process.poll() is not None for process in processes)


def test_bad_configuration_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown grader"):
        Grader("exact-match")
    with pytest.raises(UsageError, match="primary grader 'math-verify' is not among"):
        Grader("math-verify", graders=["tokenskip"])
    with pytest.raises(UsageError, match="timeout"):
        Grader(timeout=0)


# ---------------------------------------------------------------- gold check on the real data


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gsm8k_reference_requests() -> list[GradeRequest]:
    """Each GSM8K reference solution rendered as a model answers: calculator notes removed, the
    `####` line replaced by the boxed final answer."""
    return [GradeRequest(gsm8k_solution_as_output(r["answer"]), gsm8k_final_answer(r["answer"]), question=r["question"])
            for r in read_jsonl(DATA / "gsm8k" / "test.jsonl")]


def rates(grades: list[Grade]) -> dict[str, float]:
    return {name: sum(grade.verdicts[name] for grade in grades) / len(grades) for name in grades[0].verdicts}


def test_gsm8k_reference_solutions_grade_correct(grader):
    grades = grader.grade(gsm8k_reference_requests())
    accuracy = rates(grades)
    print(f"GSM8K test references ({len(grades)}): {accuracy}")
    assert accuracy["tokenskip"] == 1.0
    assert accuracy["math-verify"] >= 0.99
    assert not any(grade.timeouts or grade.errors for grade in grades)


def test_gsm8k_references_paired_with_other_golds_grade_wrong():
    requests = gsm8k_reference_requests()
    shifted = [replace(request, reference=requests[i - 1].reference) for i, request in enumerate(requests)]
    with Grader(graders=["tokenskip"]) as in_process_only:
        accuracy = rates(in_process_only.grade(shifted))
    assert accuracy["tokenskip"] < 0.02


def test_math500_reference_solutions_grade_correct(grader):
    records = read_jsonl(DATA / "math-500" / "test.jsonl")
    grades = grader.grade([GradeRequest(r["solution"], r["answer"], question=r["problem"]) for r in records])
    accuracy = rates(grades)
    print(f"MATH-500 references ({len(grades)}): {accuracy}")
    assert accuracy["tokenskip"] >= 0.99
    assert accuracy["math-verify"] >= 0.97

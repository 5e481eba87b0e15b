"""Build `original_verdicts.jsonl`: TokenSkip's own grading code, run on a corpus of answers.

The fixture holds facts about the original repository (hemingkx/TokenSkip), never its code: for
each case the inputs (question, model output, gold answer) and what the original's grading made of
them, called exactly as its `evaluation.py` calls it:

- GSM8K: `prediction = extract_last_single_answer(question, output, task="cot")` (a string), gold
  `answer.replace(",", "")`;
- MATH: `prediction = extract_math_answer(question, output, task="cot")` (a list), gold
  `extract_math_answer(problem, solution, task="cot")` (a list, from the solution, not the
  dataset's `answer` field);
- then an empty prediction is wrong, anything else is `eval_math({"prediction": ..., "answer": ...})`.

`tests/grading/test_fidelity.py` checks, case for case, that the toolkit's default grader extracts
the same answers and gives the same verdicts. The original's code is imported from the checkout
named on the command line, at run time, in an interpreter that has what it imports (sympy,
regex, numpy and antlr4-python3-runtime; the toolkit's own versions, so that only the code differs):

    git -C <bare mirror of hemingkx/TokenSkip> archive ef02f53 | tar -x -C /tmp/TokenSkip   # or a clone
    python -m venv /tmp/original-venv && /tmp/original-venv/bin/pip install sympy==1.14.0 \\
        antlr4-python3-runtime==4.11.0 regex numpy
    make demo    # the demo's 14 runs, whose 576 outputs are part of the corpus
    TOKENSKIP_DATA_DIR=../shared/data /tmp/original-venv/bin/python tests/grading/fidelity/build_corpus.py \\
        /tmp/TokenSkip --demo outputs/demo

The corpus: the demo's real outputs; GSM8K test reference solutions in three renderings (the
original's own prompt answer, TokenSkip's final-answer sentence, the raw `#### N` line); every
MATH-500 reference solution, and every MATH-500 answer boxed as a model states it; and, for
sampled GSM8K and MATH-500 questions, the answer formats models write (`\\boxed{}`, "The answer
is", "The final answer is $...$. I hope it is correct.", units, percentages, money, thousands
separators, fractions, LaTeX variants, equations, intervals, several answers, intermediate boxes),
wrong answers, truncated and empty outputs; and single-rule cases (`EDGE_CASES`, append only: a
case's id is its position).
Everything is seeded, so a rebuild with the same inputs writes the same file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20250217  # the paper's arXiv month; any fixed number would do
GSM8K_SOLUTIONS = 200  # GSM8K test reference solutions, each in three renderings
GSM8K_SYNTHETIC = 40  # GSM8K test questions whose answer is written in every format below
MATH_SYNTHETIC = 100  # MATH-500 questions likewise
ANSWER_MARKER = "\n\nThe final answer is: "  # TokenSkip's final-answer sentence (get_llamafactory_input.py)


# ---------------------------------------------------------------- the corpus (no original code here)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def case(source: str, key: str, data_name: str, question: str, output: str, reference: str, **extra) -> dict:
    return {
        "id": f"{source}:{key}",
        "source": source,
        "data_name": data_name,
        "question": question,
        "model_output": output,
        "reference": reference,
        **extra,
    }


def demo_cases(demo_dir: Path) -> list[dict]:
    """Every output of every run under the demo folder, as the runs recorded them."""
    cases = []
    for path in sorted(demo_dir.rglob("samples/predictions.jsonl")):
        run = path.parent.parent.relative_to(demo_dir).as_posix()
        for record in read_jsonl(path):
            cases.append(
                case(
                    "demo",
                    f"{run}:{record['id']}",
                    "gsm8k",
                    record["messages"][0]["content"],
                    record["model_output"],
                    str(record["answer"]),
                )
            )
    return cases


def gsm8k_final(answer_field: str) -> str:
    """The gold answer of an openai/gsm8k record as the toolkit reads it (after `####`, no commas)."""
    return answer_field.split("####")[-1].strip().replace(",", "")


def gsm8k_solution_cases(rows: list[dict], rng: random.Random) -> list[dict]:
    cases = []
    for index in sorted(rng.sample(range(len(rows)), GSM8K_SOLUTIONS)):
        row = rows[index]
        gold = gsm8k_final(row["answer"])
        reasoning = re.sub(r"<<[^<>]*>>", "", row["answer"].split("####")[0]).strip()
        renderings = {
            # the assistant turn the original's process_gsm8k_test writes for a GSM8K record
            "original-format": f"{reasoning}\nSo the answer is $\\boxed{{{row['answer'].split('####')[-1].strip()}}}$.",
            "final-answer-sentence": f"{reasoning}{ANSWER_MARKER}$\\boxed{{{gold}}}$",
            "raw": row["answer"],  # calculator notes and the `#### N` line: the last-number rule
        }
        for name, output in renderings.items():
            cases.append(case("gsm8k-solution", f"test-{index}:{name}", "gsm8k", row["question"], output, gold))
    return cases


def math_solution_cases(rows: list[dict], source: str = "math-solution") -> list[dict]:
    """Each MATH-500 solution as a model output; with `source="math-gold"`, the dataset's `answer`
    boxed once instead: where the gold the original reads from the solution (every box) and the
    dataset's answer field part ways."""
    outputs = {"math-solution": lambda row: row["solution"],
               "math-gold": lambda row: f"The final answer is: $\\boxed{{{row['answer']}}}$"}
    return [case(source, row.get("unique_id", str(index)), "math", row["problem"], outputs[source](row),
                 row["answer"], solution=row["solution"]) for index, row in enumerate(rows)]


def gsm8k_formats(n: str, wrong: str, question_solution: str) -> dict[str, str]:
    """An answer `n` (and a wrong one) written the ways models write GSM8K answers."""
    integer = re.fullmatch(r"-?\d+", n) is not None
    value = int(n) if integer else None
    formats = {
        "boxed": f"Let's add them up.{ANSWER_MARKER}$\\boxed{{{n}}}$",
        "answer-is": f"So the answer is {n}.",
        "answer-is-unit": f"So, the answer is {n} miles.",
        "answer-is-dollars": f"The answer is ${n}.",
        "answer-is-bold": f"The answer is: **{n}**",
        "answer-is-colon-newline": f"The answer is:\n{n}",
        "answer-is-then-words": f"Thus the answer is {n} and we are done",
        "answer-is-empty": f"We get {n} eggs. The answer is",
        "the-final-answer-is": f"The final answer is {n}",
        "minerva": f"Final Answer: The final answer is ${n}$. I hope it is correct.",
        "boxed-unit-text": f"\\boxed{{{n} \\text{{ dollars}}}}",
        "boxed-unit-plain": f"\\boxed{{{n} dollars}}",
        "boxed-then-unit": f"The total is $\\boxed{{{n}}}$ miles.",
        "boxed-dollar": f"\\boxed{{\\${n}}}",
        "boxed-dollar-plain": f"\\boxed{{${n}}}",
        "boxed-decimal": f"\\boxed{{{n}.00}}",
        "boxed-percent": f"\\boxed{{{n}\\%}}",
        "boxed-percent-outside": f"\\boxed{{{n}}}%",
        "boxed-equation": f"\\boxed{{x = {n}}}",
        "boxed-dfrac": f"\\boxed{{\\dfrac{{{n}}}{{1}}}}",
        "boxed-no-brace": f"The answer is $\\boxed {n}$.",
        "fbox": f"\\fbox{{{n}}}",
        "last-number": f"She has {n} apples left",
        "last-number-then-other": f"{n} apples in total, which took 3 hours",
        "program-output": f"```python\nprint({n})\n```\n```output\n{n}\n```",
        "double-boxed": f"First $\\boxed{{{wrong}}}$, but on reflection $\\boxed{{{n}}}$.",
        "double-boxed-last-wrong": f"It is $\\boxed{{{n}}}$, or rather $\\boxed{{{wrong}}}$.",
        "thinking": f"<think>\nLet me compute {n} + 1 = {wrong}\n</think>\n\nThe answer is $\\boxed{{{n}}}$.",
        "loop": f"{question_solution[:40]}\n\n" + f"The is {n}.\n\n" * 12,
        "wrong-boxed": f"\\boxed{{{wrong}}}",
        "empty-box": "The answer is $\\boxed{}$.",
        "truncated-box": f"The final answer is: $\\boxed{{{n[:-1]}",
        "truncated-reasoning": question_solution[: max(1, len(question_solution) * 2 // 5)],
        "empty": "",
        "whitespace": "  \n\t",
        "no-number": "I do not know how to solve this.",
    }
    if integer:
        formats.update(
            {
                "boxed-thousands": f"\\boxed{{{value:,}}}",
                "boxed-thousands-latex": "\\boxed{" + f"{value:,}".replace(",", ",\\!") + "}",
                "answer-is-thousands": f"The answer is {value:,}.",
                "boxed-fraction": f"\\boxed{{\\frac{{{2 * value}}}{{2}}}}",
                "boxed-slash": f"\\boxed{{{2 * value}/2}}",
                "boxed-times-100": f"\\boxed{{{value * 100}}}",
                "boxed-over-100": f"\\boxed{{{value / 100:g}}}",
                "boxed-negative": f"\\boxed{{{-value}}}",
                "money-cents": f"\\boxed{{\\${value}.50}}",
                "boxed-sum": f"\\boxed{{{value - 1} + 1}}",
            }
        )
    return formats


def gsm8k_synthetic_cases(rows: list[dict], rng: random.Random) -> list[dict]:
    cases = []
    for index in sorted(rng.sample(range(len(rows)), GSM8K_SYNTHETIC)):
        row = rows[index]
        gold = gsm8k_final(row["answer"])
        wrong = str(int(gold) + 1) if re.fullmatch(r"-?\d+", gold) else gold + "1"
        solution = re.sub(r"<<[^<>]*>>", "", row["answer"].split("####")[0]).strip()
        for name, output in gsm8k_formats(gold, wrong, solution).items():
            cases.append(case("gsm8k-format", f"test-{index}:{name}", "gsm8k", row["question"], output, gold))
    return cases


def _spaced(answer: str) -> str:
    return re.sub(r"\s*([,+=]|\\cup)\s*", r" \1 ", answer).strip()


def _decimal_of_fraction(answer: str) -> str | None:
    fraction = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", answer.strip())
    if not fraction or int(fraction.group(3)) == 0:
        return None
    sign, numerator, denominator = fraction.groups()
    return f"{sign}{int(numerator) / int(denominator):.4f}"


def math_formats(answer: str, other: str, question: str, solution: str, rng: random.Random) -> dict[str, str]:
    """A MATH answer (and another question's) written the ways models write MATH answers."""
    formats = {
        "boxed": f"Thus the answer is $\\boxed{{{answer}}}$.",
        "final-answer-sentence": f"We are done.{ANSWER_MARKER}$\\boxed{{{answer}}}$",
        "minerva": f"Final Answer: The final answer is ${answer}$. I hope it is correct.",
        "r1-style": f"</think>\n\n**Final Answer**\n\\[\n\\boxed{{{answer}}}\n\\]",
        "answer-is": f"The answer is {answer}.",
        "answer-is-math": f"Therefore, the answer is ${answer}$.",
        "boxed-dfrac": f"\\boxed{{{answer.replace(chr(92) + 'frac', chr(92) + 'dfrac')}}}",
        "boxed-spaced": f"\\boxed{{{_spaced(answer)}}}",
        "boxed-left-right": "\\boxed{" + answer.replace("(", "\\left(").replace(")", "\\right)") + "}",
        "boxed-text": f"\\boxed{{\\text{{{answer}}}}}",
        "boxed-unit": f"\\boxed{{{answer} \\text{{ units}}}}",
        "boxed-degrees": f"\\boxed{{{answer}^\\circ}}",
        "boxed-equation": f"\\boxed{{x = {answer}}}",
        "other-answer": f"\\boxed{{{other}}}",
        "intermediate-box": f"First $\\boxed{{{other}}}$, and finally $\\boxed{{{answer}}}$.",
        "intermediate-box-last-wrong": f"We get $\\boxed{{{answer}}}$, hence $\\boxed{{{other}}}$.",
        "truncated-box": f"So the answer is $\\boxed{{{answer[: len(answer) // 2]}",
        "truncated-solution": solution[: len(solution) // 2],
    }
    decimal = _decimal_of_fraction(answer)
    if decimal is not None:
        formats["boxed-decimal"] = f"\\boxed{{{decimal}}}"
    members = [member.strip() for member in answer.split(",")]
    if len(members) > 1 and not re.search(r"[()\[\]]", answer):
        shuffled = members[:]
        rng.shuffle(shuffled)
        formats["members-reordered"] = f"\\boxed{{{', '.join(reversed(members))}}}"
        formats["members-boxed-apart"] = " and ".join(f"$\\boxed{{{member}}}$" for member in shuffled)
        formats["members-and"] = "\\boxed{" + " \\text{ and } ".join(members) + "}"
    if "\\cup" in answer:
        formats["union-reordered"] = "\\boxed{" + " \\cup ".join(reversed(answer.split("\\cup"))) + "}"
    if answer.strip().startswith(("(", "[")) and answer.strip().endswith((")", "]")):
        swapped = {"(": "[", "[": "(", ")": "]", "]": ")"}
        formats["brackets-swapped"] = (
            f"\\boxed{{{swapped[answer.strip()[0]]}{answer.strip()[1:-1]}{swapped[answer.strip()[-1]]}}}"
        )
    return formats


def math_synthetic_cases(rows: list[dict], rng: random.Random) -> list[dict]:
    cases = []
    chosen = sorted(rng.sample(range(len(rows)), MATH_SYNTHETIC))
    for position, index in enumerate(chosen):
        row = rows[index]
        other = rows[chosen[position - 1]]["answer"]
        key = row.get("unique_id", str(index))
        for name, output in math_formats(row["answer"], other, row["problem"], row["solution"], rng).items():
            cases.append(
                case(
                    "math-format",
                    f"{key}:{name}",
                    "math",
                    row["problem"],
                    output,
                    row["answer"],
                    solution=row["solution"],
                )
            )
    return cases


# Answers that exercise single rules, each against a gold answer: (output, gold, question).
EDGE_CASES = {
    "gsm8k": [
        ("The answer is 16 miles.", "16", ""),
        ("The answer is 1,000 dollars.", "1000", ""),
        ("\\boxed{0.5}", "50", ""),
        ("\\boxed{50\\%}", "0.5", ""),
        ("\\boxed{.5}", "0.5", ""),
        ("\\boxed{5.}", "5", ""),
        ("\\boxed{-3}", "-3", ""),
        ("\\boxed{3}.", "-3", ""),
        ("\\boxed{1e3}", "1000", ""),
        ("\\boxed{10^3}", "1000", ""),
        ("\\boxed{2^{10}}", "1024", ""),
        ("\\boxed{\\sqrt{16}}", "4", ""),
        ("\\boxed{8/2}", "4", ""),
        ("\\boxed{12 \\div 3}", "4", ""),
        ("\\boxed{4 \\times 1}", "4", ""),
        ("\\boxed{4 \\cdot 1}", "4", ""),
        ("\\boxed{4:00}", "4", ""),
        ("\\boxed{4 p.m.}", "4", ""),
        ("\\boxed{4 \\mbox{ cm}}", "4", ""),
        ("\\boxed{4 \\, \\text{kg}}", "4", ""),
        ("\\boxed{4 \\text{ kg} and 5}", "4", ""),
        ("\\boxed{\\textbf{4}}", "4", ""),
        ("\\boxed{\\mathbf{4}}", "4", ""),
        ("\\boxed{4{cm}^2}", "4", ""),
        ("\\boxed{4t}", "4", ""),
        ("\\boxed{four}", "4", ""),
        ("The answer is $4$. I hope it is correct.", "4", ""),
        ("the answer is 4", "4", ""),
        ("The Answer is 4", "4", ""),
        ("answer: 4", "4", ""),
        ("Answer = 4 apples", "4", ""),
        ("The answer is 4.5 hours", "4.5", ""),
        ("The answer is 4.50", "4.5", ""),
        ("The answer is 04", "4", ""),
        ("The answer is +4", "4", ""),
        ("It is 4 and 5", "5", ""),
        ("7 - 3 = 4", "4", ""),
        ("x=-4", "-4", ""),
        ("\\boxed{4}\\boxed{5}", "5", ""),
        ("\\boxed{\\boxed{4}}", "4", ""),
        ("\\boxed{{4}}", "4", ""),
        ("\\boxed{4} \\boxed{", "4", ""),
        ("boxed{4}", "4", ""),
        ("\\boxed{inf}", "4", ""),
        ("The answer is ∞", "4", ""),
        ("The answer is ４", "4", ""),
        ("\\boxed{4.000001}", "4", ""),
        ("\\boxed{4.0011}", "4", ""),
        ("\\boxed{400\\%}", "4", ""),
        ("\\boxed{0.04}", "4", ""),
        ("```output\n4\n```", "4", ""),
        ("```output\n4", "4", ""),
        ("The answer is\n\n4", "4", ""),
        ("The answer is: $\\boxed{4}$ dollars", "4", ""),
        ("He answer is 4", "4", ""),
        ("The answer is 4/1", "4", ""),
        ("The answer is 8/2", "4", ""),
        ("The answer is \\frac{8}{2}", "4", ""),
        ("The answer is \\frac82", "4", ""),
    ],
    "math": [
        ("\\boxed{\\frac12}", "\\frac{1}{2}", ""),
        ("\\boxed{1/2}", "\\frac{1}{2}", ""),
        ("\\boxed{0.5}", "\\frac{1}{2}", ""),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", ""),
        ("\\boxed{2\\sqrt2}", "\\sqrt{8}", ""),
        ("\\boxed{\\sqrt 8}", "2\\sqrt{2}", ""),
        ("\\boxed{sqrt(2)/2}", "\\frac{\\sqrt{2}}{2}", ""),
        ("\\boxed{(1,2)}", "(1,2)", ""),
        ("\\boxed{(2,1)}", "(1,2)", ""),
        ("\\boxed{[0,1)}", "(0,1)", ""),
        ("\\boxed{(0,1]}", "(0,1]", ""),
        ("\\boxed{(-\\infty, 2) \\cup (3, \\infty)}", "(3,\\infty)\\cup(-\\infty,2)", ""),
        ("\\boxed{(-\\infty,2)\\cup(3,\\infty)}", "(-\\infty,2)\\cup(3,\\infty)", ""),
        ("\\boxed{x \\in [1,2]}", "[1,2]", ""),
        ("\\boxed{[1,2]}", "x\\in[1,2]", ""),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", ""),
        ("\\boxed{\\begin{pmatrix} 1 & 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", ""),
        ("\\boxed{\\begin{bmatrix} 0.5 \\\\ 2 \\end{bmatrix}}", "\\begin{pmatrix}\\frac{1}{2}\\\\2\\end{pmatrix}", ""),
        ("\\boxed{y = 2x + 1}", "y=2x+1", ""),
        ("\\boxed{2x + 1 = y}", "y=2x+1", ""),
        ("\\boxed{x+y=1}", "2x+2y=2", ""),
        ("\\boxed{x = 3}", "3", ""),
        ("\\boxed{3}", "x=3", ""),
        ("\\boxed{k = 3}", "3", ""),
        ("\\boxed{abc = 3}", "3", ""),
        ("\\boxed{1, 2, 3}", "1,2,3", "Enter all the solutions, separated by commas."),
        ("\\boxed{3, 2, 1}", "1,2,3", "Enter all the solutions, separated by commas."),
        ("\\boxed{3, 2}", "1,2,3", "Enter all the solutions, separated by commas."),
        ("$\\boxed{1}$ and $\\boxed{2}$", "1,2", "Enter all the solutions, separated by commas."),
        ("\\boxed{3, 2, 1}", "1,2,3", "Find the roots."),
        ("\\boxed{2 \\text{ and } 3}", "2,3", "Find the roots."),
        ("\\boxed{2 \\text{ and } 3}", "3", ""),
        ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", ""),
        ("\\boxed{1 \\pm \\sqrt{5}}", "1\\pm\\sqrt{5}", ""),
        ("\\boxed{\\pi}", "\\pi", ""),
        ("\\boxed{3.14159}", "\\pi", ""),
        ("\\boxed{180^\\circ}", "180", ""),
        ("\\boxed{90^{\\circ}}", "90", ""),
        ("\\boxed{\\$32,\\!348}", "32,\\!348", ""),
        ("\\boxed{10,\\!080}", "10080", ""),
        ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", ""),
        ("\\boxed{Evelyn}", "\\text{Evelyn}", ""),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", ""),
        ("\\boxed{C}", "\\text{(C)}", ""),
        ("\\boxed{(C)}", "\\text{(C)}", ""),
        ("\\boxed{\\infty}", "\\infty", ""),
        ("\\boxed{-\\infty}", "-\\infty", ""),
        ("\\boxed{2+3i}", "2+3i", ""),
        ("\\boxed{2+3j}", "2+3i", ""),
        ("\\boxed{3i+2}", "2+3i", ""),
        ("\\boxed{\\frac{1}{2} + \\frac{\\sqrt{3}}{2} i}", "\\frac{1+i\\sqrt{3}}{2}", ""),
        ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", ""),
        ("\\boxed{p - q}", "-q + p", ""),
        ("\\boxed{52_8}", "52_8", ""),
        ("\\boxed{52_8}", "52", ""),
        ("\\boxed{1011_2}", "11", ""),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34", ""),
        ("\\boxed{\\tfrac{3}{4}}", "0.75", ""),
        ("\\boxed{75\\%}", "\\frac{3}{4}", ""),
        ("\\boxed{5 \\text{ cm}^2}", "5", ""),
        ("\\boxed{5\\text{ cm}}", "5\\text{ cm}", ""),
        ("\\boxed{3x + \\text{a} - 1\\text{ cm}}", "3x+a-1", ""),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", ""),
        ("\\boxed{2 \\cdot 3}", "6", ""),
        ("\\boxed{\\sqrt{2} \\cdot 3}", "3\\sqrt{2}", ""),
        ("\\boxed{\\tan 30^\\circ}", "\\frac{\\sqrt{3}}{3}", ""),
        ("\\boxed{a^2}", "a^2", ""),
        ("\\boxed{e^2}", "e^2", ""),
        ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}", ""),
        ("The answer is $\\frac{1}{2}$, I think", "\\frac{1}{2}", ""),
        ("The answer is $\\boxed{7}$ (seven).", "7", ""),
        ("the answer is 7", "7", ""),
        ("", "7", ""),
        ("\\boxed{}", "7", ""),
        ("\\boxed{7", "7", ""),
        ("7", "7", ""),
    ],
}


def edge_cases() -> list[dict]:
    cases = []
    for data_name, items in EDGE_CASES.items():
        for index, (output, gold, question) in enumerate(items):
            solution = f"So the answer is $\\boxed{{{gold}}}$."  # where the original reads a MATH gold from
            extra = {"solution": solution} if data_name == "math" else {}
            cases.append(case(f"edge-{data_name}", str(index), data_name, question, output, gold, **extra))
    return cases


def build_cases(demo_dir: Path | None, data_dir: Path) -> list[dict]:
    rng = random.Random(SEED)
    gsm8k = read_jsonl(data_dir / "gsm8k" / "test.jsonl")
    math500 = read_jsonl(data_dir / "math-500" / "test.jsonl")
    cases = demo_cases(demo_dir) if demo_dir else []
    cases += gsm8k_solution_cases(gsm8k, rng)
    cases += math_solution_cases(math500)
    cases += math_solution_cases(math500, source="math-gold")
    cases += gsm8k_synthetic_cases(gsm8k, rng)
    cases += math_synthetic_cases(math500, rng)
    cases += edge_cases()
    ids = [c["id"] for c in cases]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise SystemExit(f"duplicate case ids: {duplicated[:5]}")
    return cases


# ---------------------------------------------------------------- the original's verdicts


class Overran(Exception):
    pass


def _alarm(signum, frame):
    raise Overran()


_ORIGINAL: dict = {}


def _load_original(checkout: str) -> None:
    sys.path.insert(0, checkout)
    from data_processing.answer_extraction import extract_last_single_answer, extract_math_answer
    from eval.eval_script import eval_math

    _ORIGINAL.update(single=extract_last_single_answer, math=extract_math_answer, eval_math=eval_math)
    signal.signal(signal.SIGALRM, _alarm)


def original_outcome(item: tuple[dict, float]) -> dict:
    """What the original's evaluation.py records for one case: its gold, prediction and verdict."""
    case_, timeout = item
    outcome: dict = {}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        if case_["data_name"] == "gsm8k":
            gold = case_["reference"].replace(",", "")
            prediction = _ORIGINAL["single"](case_["question"], case_["model_output"], task="cot")
        else:
            gold = _ORIGINAL["math"](case_["question"], case_["solution"], task="cot")
            prediction = _ORIGINAL["math"](case_["question"], case_["model_output"], task="cot")
        outcome.update(original_reference=gold, original_prediction=prediction)
        item_ = {"prediction": prediction, "answer": gold}
        verdict = False if len(prediction) == 0 else bool(_ORIGINAL["eval_math"](item_))
        outcome["original_verdict"] = verdict
    except Overran:
        outcome.update(original_verdict=None, original_error=f"no verdict within {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - the original's own crash is a fact to record
        outcome.update(original_verdict=None, original_error=f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original", help="a checkout of hemingkx/TokenSkip (its data_processing/ and eval/)")
    parser.add_argument("--demo", type=Path, default=None, help="the demo's output folder (outputs/demo)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TOKENSKIP_DATA_DIR", "../shared/data")),
        help="GSM8K and MATH-500 (default: $TOKENSKIP_DATA_DIR)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "original_verdicts.jsonl")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take in the original")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    cases = build_cases(args.demo, args.data_dir)
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool(args.workers, _load_original, (args.original,)) as pool:
        outcomes = pool.map(original_outcome, [(c, args.timeout) for c in cases], chunksize=8)
    lines = []
    for case_, outcome in zip(cases, outcomes):
        case_.pop("solution", None)  # the gold the original read from it is kept (original_reference)
        lines.append(json.dumps({**case_, **outcome}, ensure_ascii=False))
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    by_source: dict[str, int] = {}
    for case_ in cases:
        by_source[case_["source"]] = by_source.get(case_["source"], 0) + 1
    failed = sum(outcome["original_verdict"] is None for outcome in outcomes)
    print(
        f"{len(cases)} cases ({', '.join(f'{k} {v}' for k, v in by_source.items())}), "
        f"{failed} without a verdict, in {time.monotonic() - started:.0f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()

"""TokenSkip's own grading, as its `evaluation.py` runs it: the default "tokenskip" grader.

TokenSkip (hemingkx/TokenSkip at ef02f53) grades with DeepSeek-Math's answer extraction and
`math_equal`: `extract_last_single_answer` for GSM8K, `extract_math_answer` for MATH (a list of
every stated answer), then `eval_math`. The rules below reproduce what that code does, quirks
included, so that accuracies are the paper's: "So, the answer is 16 miles." states `16miles`,
which is not 16; `2 \\cdot 3` reads as `23`; a `\\text{...}` ends whatever follows it. The fixture
`tests/grading/fidelity/original_verdicts.jsonl` holds the original code's own extractions and
verdicts on thousands of answers, and the tests check these rules against it case for case.

What is not reproduced is where the original runs text as Python: its `parse_expr` (and `N()` of a
string) `eval` the answer. Here the same sympy objects are built from a syntax tree
(`equivalence.parse_plain` with the `PARSE_EXPR` and `SYMPIFY` dialects), and names that
`parse_expr` would look up in Python (`max`, `Rational`, `N`) leave the answer unparsed instead.
Resource errors (RecursionError, MemoryError) are raised for the caller to record, where the
original swallowed them; the verdict is "incorrect" either way. `graders.py` runs every check
that needs sympy in a worker under a hard timeout (the original had none).

The corrected rules of `parsing.py`/`equivalence.py` remain available as "tokenskip-lenient".
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from tokenskip.grading.equivalence import (
    PARSE_EXPR,
    RESOURCE_ERRORS,
    SYMPIFY,
    difference_is_zero,
    first_parse,
    latex_parser,
    parse_plain,
)

PRECISION = 1e-3  # `is_correct`'s absolute tolerance, and `math_equal`'s
_NUMBER = re.compile(r"-?\d*\.?\d+")
_AND = re.compile(r"\\text\{\s*and\s*\}")
_MATRIX_OPENERS = ("\\begin{pmatrix}", "\\begin{bmatrix}")
_MATRIX_CLOSERS = ("\\end{pmatrix}", "\\end{bmatrix}")


class NeedsSympy(Exception):
    """Raised by the cheap pass (`cheap=True`) where the verdict depends on a symbolic check."""


# ---------------------------------------------------------------- extraction


def stated_answers(text: str) -> list[str]:
    """Every answer the text states, in order, each normalised (`extract_answer(exhaust=True)`).

    The first rule that applies decides: the Minerva sentence "final answer is $X$. I hope", then
    every `boxed{...}`, then what follows the last "he answer is", then a program's output block,
    then the last number.
    """
    if "final answer is $" in text and "$. I hope" in text:
        found = [text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()]
    elif "boxed" in text:
        found = _boxed_contents(text)
    elif "he answer is" in text:
        found = [text.rsplit("he answer is", 1)[1].strip()]
    elif _program_output(text):
        found = [_program_output(text)]
    else:
        found = _NUMBER.findall(text.replace(",", ""))[-1:]
    return [normalize(_first_line(answer)) for answer in found]


def _boxed_contents(text: str) -> list[str]:
    """What follows each `boxed{` up to its closing brace (braces counted as plain characters;
    a `}` directly followed by `%` is kept); a group left open is skipped."""
    contents = []
    for piece in text.split("boxed{")[1:]:
        depth = 0
        for position, char in enumerate(piece):
            depth += (char == "{") - (char == "}")
            if depth < 0:
                keep_brace = piece[position + 1 : position + 2] == "%"
                contents.append(piece[: position + keep_brace])
                break
    return contents


def _program_output(text: str) -> str:
    if "```output" not in text:
        return ""
    return text.split("```output")[-1].split("```")[0].strip()


def _first_line(answer: str) -> str:
    return answer.strip().split("\n")[0].lstrip(":").rstrip(".").rstrip("/")


def single_answer(model_output: str) -> str:
    """GSM8K's extraction (`extract_last_single_answer`): the last stated answer, or ""."""
    answers = stated_answers(model_output)
    return answers[-1] if answers else ""


def math_answers(question: str, text: str) -> list[str]:
    """MATH's extraction (`extract_math_answer`): every stated answer, an answer split at its commas
    when the question asks for a list "separated by commas" (and it has no brackets), or at
    `\\text{ and }`."""
    answers = []
    for answer in stated_answers(text):
        if "separated by commas" in question and not any(bracket in answer for bracket in "()[]"):
            answers += [member.strip() for member in answer.split(",")]
        elif _AND.search(answer):
            answers += [member.strip() for member in _AND.sub("[SEP]", answer).split("[SEP]")]
        else:
            answers.append(answer.strip())
    return answers


def math_reference(question: str, reference: str) -> list[str]:
    """A MATH gold answer as the original grades against it. It extracts the gold from the solution
    (every `\\boxed{}`); the toolkit has the dataset's `answer` field, which reads as a solution
    that boxes it once."""
    return math_answers(question, "\\boxed{" + reference + "}")


# ---------------------------------------------------------------- normalisation (strip_string)

# Each rule is (what it does, the function), applied in this order; the order matters.
_TRAILING_TEXT = re.compile(r"\\text{.*?}$")


def _unwrap_text(text: str) -> str:
    if text.startswith("\\text{") and text.endswith("}"):
        return text.split("{", 1)[1][:-1]
    return text


def _drop_trailing_text(text: str) -> str:
    # from the first `\text{` to the end, when the answer ends in `}` and something is left
    shorter = _TRAILING_TEXT.sub("", text).strip()
    return shorter if shorter not in ("", text) else text


def _spell_infinity(text: str) -> str:
    text = text.replace("infinity", "\\infty")
    if "\\infty" not in text:
        text = text.replace("inf", "\\infty")
    return text.replace("+\\inity", "\\infty")


def _j_is_i(text: str) -> str:
    return text.replace("j", "i") if "j" in text and "i" not in text else text


def _leading_zero(text: str) -> str:
    return "0" + text if text.startswith(".") else text


def _root_arguments(text: str) -> str:
    for command in ("sqrt", "tan"):
        text = re.sub(rf"\\{command}(-?[0-9.a-zA-Z]+)", rf"\\{command}{{\1}}", text)
        text = re.sub(rf"\\{command}\s+(\w+)$", rf"\\{command}{{\1}}", text)
    return text


def _braced_fractions(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`: the two characters after
    `\\frac` are its arguments unless the first is a brace; the whole answer is left as it was when
    a `\\frac` has fewer than two characters after it."""
    first, *rest = text.split("\\frac")
    pieces = [first]
    for piece in rest:
        if piece.startswith("{"):
            pieces.append(piece)
        elif len(piece) < 2:
            return text
        elif piece[1] == "{":
            pieces.append("{" + piece[0] + "}" + piece[1:])
        else:
            pieces.append("{" + piece[0] + "}{" + piece[1] + "}" + piece[2:])
    return "\\frac".join(pieces)


def _slash_fraction(text: str) -> str:
    """`3/4` -> `\\frac{3}{4}`: one slash between integers written plainly (or roots)."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = (part if "sqrt" in part else int(part) for part in parts)
    except ValueError:
        return text
    if text != f"{numerator}/{denominator}":
        return text
    return f"\\frac{{{numerator}}}{{{denominator}}}"


def _replace(old: str, new: str = "") -> Callable[[str], str]:
    return lambda text: text.replace(old, new)


def _sub(pattern: str, replacement: str = "", strip: bool = False) -> Callable[[str], str]:
    compiled = re.compile(pattern)
    if strip:
        return lambda text: compiled.sub(replacement, text).strip()
    return lambda text: compiled.sub(replacement, text)


_NORMALISATION: tuple[Callable[[str], str], ...] = (
    lambda text: text.strip().replace("\n", "").rstrip("."),
    _replace("\\!"),
    _unwrap_text,
    _replace("tfrac", "frac"), _replace("dfrac", "frac"), _replace("cfrac", "frac"),
    _replace("\\left"), _replace("\\right"),  # as substrings: `\rightarrow` loses its `\right`
    _drop_trailing_text,
    lambda text: text.replace("^{\\circ}", "").strip().replace("^\\circ", "").strip(),
    _sub(r"\{(c|m)?m\}(\^(2|3))?", strip=True),
    _sub(r"p\.m\.$", strip=True),
    _sub(r"(\d)\s*t$", r"\1", strip=True),
    _replace("\\$"), _replace("$"),
    _replace("x\\in"),
    _replace("\\%", "%"),
    _replace(" .", " 0."), _replace("{.", "{0."),
    _replace("\\cdot"),
    _spell_infinity,
    _replace("\\mathbf"), _replace("\\mathrm"),
    _sub(r"\\mbox{.*?}"),
    _j_is_i,
    _sub(r"(\d+)\.0+([^\d])", r"\1\2"), _sub(r"(\d+)\.0+$", r"\1"),
)
_AFTER_EMPTY_CHECK: tuple[Callable[[str], str], ...] = (
    _leading_zero,
    _root_arguments,
    _replace(" "),
    _braced_fractions,
    _slash_fraction,
    _sub(r"(\\|,|\.)+$"),
)


def normalize(answer: str) -> str:
    """An answer in the original's canonical spelling (`strip_string`)."""
    text = str(answer)
    for rule in _NORMALISATION:
        text = rule(text)
    if not text:
        return text
    for rule in _AFTER_EMPTY_CHECK:
        text = rule(text)
    return text


# ---------------------------------------------------------------- verdicts (eval_math, math_equal)


def verdict(prediction: str | list[str], gold: str | list[str], *, cheap: bool = False) -> bool:
    """Whether the extracted prediction matches the gold, as `evaluation.py` decides: an empty
    prediction is wrong; two lists are deduplicated and only the last `len(gold)` predictions are
    matched against the gold, each of either side needing a match on the other.

    `cheap`: raise `NeedsSympy` instead of running a symbolic check (the in-process shortcut)."""
    if len(prediction) == 0:
        return False
    if isinstance(prediction, list) and isinstance(gold, list):
        prediction, gold = _matched_against(prediction, gold)
    return _is_correct(prediction, gold, cheap)


def _matched_against(prediction: list[str], gold: list[str]) -> tuple[list[str], list[str]]:
    """`eval_math`'s lists: both deduplicated, and of the predictions only the last `len(gold)`
    (some outputs box what is not an answer)."""
    gold = list(dict.fromkeys(gold))
    return list(dict.fromkeys(prediction))[-len(gold):], gold


def _is_correct(prediction: str | list[str], gold: str | list[str], cheap: bool) -> bool:
    if isinstance(prediction, list) and isinstance(gold, list):
        predicted, matched = set(), set()
        for i, one in enumerate(prediction):
            for j, other in enumerate(gold):
                if _is_correct(one, other, cheap):
                    predicted.add(i)
                    matched.add(j)
        return len(predicted) == len(prediction) and len(matched) == len(gold)
    if "\\cup" in prediction and "\\cup" in gold:
        return _is_correct(prediction.split("\\cup"), gold.split("\\cup"), cheap)
    try:
        if abs(float(prediction.replace(",", "")) - float(gold.replace(",", ""))) < PRECISION:
            return True
    except (ValueError, OverflowError):
        pass
    return bool(gold and prediction == gold) or math_equal(prediction, gold, cheap=cheap)


def _digits(text: str) -> float | None:
    """A number, `1,234` and `50%` (= 0.5) included, as Python's float() reads it (`parse_digits`)."""
    text = str(text).replace(",", "")
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith("%"):
        text = text[:-1].removesuffix("\\")
        try:
            return float(text) / 100
        except ValueError:
            pass
    return None


_BRACKETED = re.compile(r"(\(|\[).+(\)|\])")


def math_equal(prediction: str, reference: str, *, cheap: bool = False) -> bool:
    """DeepSeek-Math's `math_equal` with its percentage leniency (a gold 20 is matched by 0.2, 20
    and 2000), element-wise brackets and matrices, equations and finally sympy."""
    if str(prediction) == str(reference):
        return True
    pred_number, ref_number = _digits(prediction), _digits(reference)
    if pred_number is not None and ref_number is not None:
        candidates = (ref_number / 100, ref_number, ref_number * 100)
        return any(math.isclose(candidate, pred_number, abs_tol=PRECISION) for candidate in candidates)
    if not prediction:
        return False
    reference, prediction = str(reference).strip(), str(prediction).strip()

    def equal(a: str, b: str) -> bool:
        return math_equal(a, b, cheap=cheap)

    if _BRACKETED.match(prediction) and _BRACKETED.match(reference):
        pred_parts, ref_parts = prediction[1:-1].split(","), reference[1:-1].split(",")
        if len(pred_parts) == len(ref_parts) and all(equal(p, r) for p, r in zip(pred_parts, ref_parts)):
            return True
    if _matrices_equal(prediction, reference, equal):
        return True
    pred_sides, ref_sides = prediction.split("="), reference.split("=")
    if len(pred_sides) == 2 and len(ref_sides) == 2:
        pred_zero = f"{pred_sides[0].strip()} - ({pred_sides[1].strip()})"
        ref_zero = f"{ref_sides[0].strip()} - ({ref_sides[1].strip()})"
        if symbolic_equal(pred_zero, ref_zero, cheap) or symbolic_equal(f"-({pred_zero})", ref_zero, cheap):
            return True
    elif len(pred_sides) == 2 and len(pred_sides[0].strip()) <= 2 and len(ref_sides) == 1:
        if equal(pred_sides[1], reference):
            return True
    elif len(ref_sides) == 2 and len(ref_sides[0].strip()) <= 2 and len(pred_sides) == 1:
        if equal(prediction, ref_sides[1]):
            return True
    return symbolic_equal(prediction, reference, cheap)


def _matrices_equal(prediction: str, reference: str, equal: Callable[[str, str], bool]) -> bool:
    def rows(text: str) -> list[str] | None:
        if not (text.startswith(_MATRIX_OPENERS) and text.endswith(_MATRIX_CLOSERS)):
            return None
        inner = text[len(_MATRIX_OPENERS[0]) : -len(_MATRIX_CLOSERS[0])]
        return [row.strip() for row in inner.split("\\\\") if row.strip()]

    pred_rows, ref_rows = rows(prediction), rows(reference)
    if pred_rows is None or ref_rows is None or len(pred_rows) != len(ref_rows):
        return False
    for pred_row, ref_row in zip(pred_rows, ref_rows):
        pred_cells, ref_cells = pred_row.split("&"), ref_row.split("&")
        if len(pred_cells) != len(ref_cells) or not all(equal(p, r) for p, r in zip(pred_cells, ref_cells)):
            return False
    return True


# ---------------------------------------------------------------- sympy


class _Unparsed(str):
    """Text that neither parser read: the original kept the string, on which every sympy step fails
    (but `N()`, which sympifies it once more, with `^` as a power)."""


def read_answer(text: str) -> Any:
    """sympy's LaTeX parser (lenient mode, its default), then what parse_expr would make of it."""
    parsed = first_parse(text, [latex_parser(), lambda source: parse_plain(source, PARSE_EXPR)])
    return _Unparsed(text) if parsed is None else parsed


def numeric_value(value: Any) -> Any:
    from sympy import N

    if isinstance(value, _Unparsed):
        value = parse_plain(value, SYMPIFY)  # N(str) sympifies it: raises where that fails too
    return N(value)


def symbolic_equal(a: str, b: str, cheap: bool = False) -> bool:
    """`simplify(a - b) == 0`, else `N(a)` and `N(b)` within 1e-3, on both sides as parsed."""
    if cheap:
        raise NeedsSympy
    left, right = read_answer(a), read_answer(b)
    parsed = not isinstance(left, _Unparsed) and not isinstance(right, _Unparsed)
    if parsed and difference_is_zero(left, right):  # a string's difference fails in the original too
        return True
    try:
        return math.isclose(numeric_value(left), numeric_value(right), abs_tol=PRECISION)
    except RESOURCE_ERRORS:
        raise
    except Exception:
        return False


# ---------------------------------------------------------------- the two benchmark flavours


def grade_single(model_output: str, reference: str, question: str = "", *, cheap: bool = False) -> bool:
    """GSM8K: the last stated answer against the gold number (its commas dropped)."""
    return verdict(single_answer(model_output), reference.replace(",", ""), cheap=cheap)


def grade_math(model_output: str, reference: str, question: str = "", *, cheap: bool = False) -> bool:
    """MATH: every stated answer against the gold's (`math_reference`)."""
    return verdict(math_answers(question, model_output), math_reference(question, reference), cheap=cheap)


def graded_math_answer(model_output: str, reference: str, question: str = "") -> str:
    """The MATH answers a verdict is about, for the record: the last `len(gold)` distinct ones."""
    answers, _ = _matched_against(math_answers(question, model_output), math_reference(question, reference))
    return ", ".join(answers)


def shortcut(grade: Callable[..., bool]) -> Callable[[str, str, str], bool | None]:
    """The verdict of `grade` when no symbolic check is needed for it, else None."""

    def settle(model_output: str, reference: str, question: str) -> bool | None:
        try:
            return grade(model_output, reference, question, cheap=True)
        except NeedsSympy:
            return None

    return settle

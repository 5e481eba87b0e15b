"""Answer equivalence: is a model's final answer the same mathematical object as the gold one?

"tokenskip" re-implements the behaviour of DeepSeek-Math's `math_equal`, which TokenSkip reports
with; "math-verify" is Hugging Face's independent verifier. Both are pure but may be slow (sympy):
`tokenskip.grading.graders` runs them under a hard time limit.
"""

from __future__ import annotations

import ast
import functools
import logging
import math
import operator
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from tokenskip.core.errors import UsageError
from tokenskip.grading.parsing import normalize_answer

ABS_TOLERANCE = 1e-3  # TokenSkip's `is_correct` and DeepSeek's `math_equal` both use 1e-3
RESOURCE_ERRORS = (RecursionError, MemoryError)  # a crash, not a "no": let the caller report it
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?%?", re.IGNORECASE)
_INTEGER_FRACTION = re.compile(r"(-?)(\d*)\\frac\{(\d+)\}\{(\d+)\}")  # also mixed numbers: 1\frac{4}{5}
_MATRIX = re.compile(r"\\begin\{[pbvBV]?matrix\}(.*)\\end\{[pbvBV]?matrix\}", re.DOTALL)
_UNORDERED_HINT = re.compile(r"separated by commas|comma[- ]separated", re.IGNORECASE)
_PLAIN_EXPRESSION = re.compile(r"[\w\s.+\-*/^()]+")  # what `parse_plain` is tried on


# ---------------------------------------------------------------- the "tokenskip" equivalence


def quick_verdict(prediction: str, reference: str) -> bool | None:
    """The verdict when it is cheap to reach (no sympy), else None."""
    return _settle_cheaply(normalize_answer(prediction), normalize_answer(reference))


def is_equivalent(prediction: str, reference: str, question: str = "") -> bool:
    """Whether two answers denote the same mathematical object, in DeepSeek-Math's sense.

    Pure but possibly slow (sympy): run it under `Grader` to bound its time. Numbers match within
    1e-3, also after reading either as a percentage; tuples, intervals and matrices match element by
    element; unions, sets and the answers to "list them separated by commas" match as unordered
    collections; equations match up to sides, sign and scale; the rest is compared with sympy.
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    settled = _settle_cheaply(pred, ref)
    if settled is not None:
        return settled
    unordered = bool(_UNORDERED_HINT.search(question))
    pred_members, ref_members = _members(pred, unordered), _members(ref, unordered)
    if len(pred_members) > 1 or len(ref_members) > 1:  # then a bare `a,b` on the other side is a list too
        return _same_members(_members(pred, True), _members(ref, True))
    for compare_structure in (_sequences_equal, _matrices_equal, _equations_equal):
        verdict = compare_structure(pred, ref)
        if verdict is not None:
            return verdict
    return _symbolically_equal(pred, ref)


def _settle_cheaply(pred: str, ref: str) -> bool | None:
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    pred_decimal, ref_decimal = _decimal_value(pred), _decimal_value(ref)
    if pred_decimal is not None and ref_decimal is not None:
        # DeepSeek's percentage leniency: 0.2, 20 and 2000 all match a gold 20
        candidates = (ref_decimal, ref_decimal / 100, ref_decimal * 100)
        return any(_close(pred_decimal, candidate) for candidate in candidates)
    pred_number, ref_number = _number_value(pred), _number_value(ref)
    if pred_number is not None and ref_number is not None:
        return _close(pred_number, ref_number)
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=ABS_TOLERANCE)


def _decimal_value(text: str) -> float | None:
    """`12`, `-0.5`, `50%` (= 0.5): a number written in decimal."""
    if not _DECIMAL.fullmatch(text):
        return None
    if text.endswith("%"):
        return float(text[:-1]) / 100
    return float(text)


def _number_value(text: str) -> float | None:
    """A decimal, or a fraction of integers such as `-\\frac{3}{4}` or the mixed number `1\\frac{4}{5}`."""
    fraction = _INTEGER_FRACTION.fullmatch(text)
    if fraction:
        sign, whole, numerator, denominator = fraction.groups()
        try:
            return (-1 if sign else 1) * (int(whole or 0) + int(numerator) / int(denominator))
        except (ZeroDivisionError, ValueError, OverflowError):  # ValueError: over 4300 digits
            return None
    return _decimal_value(text)


def _members(answer: str, unordered_question: bool) -> list[str]:
    """The members of an answer that is an unordered collection, else `[answer]`; `1\\pm\\sqrt{2}`
    stands for its two values."""
    if "\\cup" in answer:
        return answer.split("\\cup")
    listed = re.sub(r",?\\text\{(?:and|or)\}", ",", answer)
    if answer.startswith("\\{") and answer.endswith("\\}"):
        members = _split_top_level(answer[2:-2])
    elif listed != answer or unordered_question:  # the split respects brackets: `(1,2),(3,4)` is two
        members = _split_top_level(listed)
    else:
        members = [answer]
    return [value for member in members for value in _plus_minus_values(member)]


def _plus_minus_values(member: str) -> list[str]:
    if member.count("\\pm") != 1 or re.search(r"[(\[,]", member):  # keep `(\pm1,2)` whole
        return [member]
    return [member.replace("\\pm", sign) for sign in "+-"]


def _same_members(preds: list[str], refs: list[str]) -> bool:
    """Every prediction matches some reference member and every reference member is matched."""
    preds, refs = list(dict.fromkeys(preds)), list(dict.fromkeys(refs))
    matched: set[int] = set()
    for pred in preds:
        hits = {index for index, ref in enumerate(refs) if is_equivalent(pred, ref)}
        if not hits:
            return False
        matched |= hits
    return len(matched) == len(refs)


def _split_top_level(text: str) -> list[str]:
    """Split at the commas that are not inside any bracket or brace."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _sequence(answer: str) -> tuple[str, list[str], str] | None:
    """Brackets and elements of a tuple, interval or bare list (`(1,2)`, `[0,1)`, `1,2`)."""
    if answer[:1] in "([" and answer[-1:] in ")]":
        depth = 0
        for index, char in enumerate(answer):
            depth += (char in "([{") - (char in ")]}")
            if depth == 0 and index < len(answer) - 1:
                break  # `(x+1)(x-1)`: the first bracket closes early, so this is no tuple
        else:
            elements = _split_top_level(answer[1:-1])
            return (answer[0], elements, answer[-1]) if len(elements) > 1 else None
    elements = _split_top_level(answer)
    return ("", elements, "") if len(elements) > 1 else None


def _sequences_equal(pred: str, ref: str) -> bool | None:
    pred_sequence, ref_sequence = _sequence(pred), _sequence(ref)
    if pred_sequence is None or ref_sequence is None:
        return None
    (pred_open, pred_elements, pred_close), (ref_open, ref_elements, ref_close) = pred_sequence, ref_sequence
    # unlike DeepSeek, `[0,1)` is not `(0,1)`: the brackets of an interval matter
    return (
        (pred_open, pred_close) == (ref_open, ref_close)
        and len(pred_elements) == len(ref_elements)
        and all(is_equivalent(p, r) for p, r in zip(pred_elements, ref_elements))
    )


def _matrix_cells(answer: str) -> list[list[str]] | None:
    match = _MATRIX.fullmatch(answer)
    if not match:
        return None
    return [row.split("&") for row in match.group(1).split("\\\\") if row]


def _matrices_equal(pred: str, ref: str) -> bool | None:
    pred_rows, ref_rows = _matrix_cells(pred), _matrix_cells(ref)
    if pred_rows is None or ref_rows is None:
        return None
    if [len(row) for row in pred_rows] != [len(row) for row in ref_rows]:
        return False
    cells = zip((cell for row in pred_rows for cell in row), (cell for row in ref_rows for cell in row))
    return all(is_equivalent(p, r) for p, r in cells)


def _equations_equal(pred: str, ref: str) -> bool | None:
    """`x=3` matches `3` (a short left side names the answer); two equations match when they are
    the same relation: `y=2x+1` and `2x+1=y`, or `x+y=1` and `2x+2y=2`."""
    pred_sides, ref_sides = pred.split("="), ref.split("=")
    if len(pred_sides) == 2 and len(ref_sides) == 2:
        return _same_equation(pred_sides, ref_sides)
    if len(pred_sides) == 2 and len(ref_sides) == 1 and len(pred_sides[0]) <= 2:
        return is_equivalent(pred_sides[1], ref)
    if len(ref_sides) == 2 and len(pred_sides) == 1 and len(ref_sides[0]) <= 2:
        return is_equivalent(pred, ref_sides[1])
    return None


def _same_equation(pred_sides: list[str], ref_sides: list[str]) -> bool:
    from sympy import simplify

    sides = [_to_sympy(side) for side in (*pred_sides, *ref_sides)]
    if any(side is None for side in sides):
        return False
    try:
        pred_zero, ref_zero = sides[0] - sides[1], sides[2] - sides[3]
        if simplify(pred_zero - ref_zero) == 0 or simplify(pred_zero + ref_zero) == 0:
            return True
        ratio = simplify(pred_zero / ref_zero)
        return bool(pred_zero.free_symbols and ratio.is_number and ratio != 0)
    except RESOURCE_ERRORS:
        raise
    except Exception:
        return False


def difference_is_zero(left: Any, right: Any) -> bool:
    """`simplify(left - right) == 0`; False where sympy cannot take or simplify the difference."""
    from sympy import simplify

    try:
        return bool(simplify(left - right) == 0)
    except RESOURCE_ERRORS:
        raise
    except Exception:
        return False


def _symbolically_equal(pred: str, ref: str) -> bool:
    from sympy import N

    pred_expr, ref_expr = _to_sympy(pred), _to_sympy(ref)
    if pred_expr is None or ref_expr is None:
        return False
    if difference_is_zero(pred_expr, ref_expr):
        return True
    try:
        return abs(complex(N(pred_expr)) - complex(N(ref_expr))) <= ABS_TOLERANCE
    except RESOURCE_ERRORS:
        raise
    except Exception:
        return False


def _to_sympy(text: str) -> Any | None:
    """Parse LaTeX (or plain `sqrt(2)/2`-style text) into sympy; None when neither parser can.

    Plain text with multi-letter names goes to `parse_plain` first, since the LaTeX parser would
    read `sqrt` as s*q*r*t. Neither parser runs any part of the text as Python (see `parse_plain`).
    """
    # outside the try below: a broken LaTeX parser must raise, not make every answer wrong;
    # strict, because the lenient mode drops what it cannot read (`3,5,7` -> 3, `52_8` -> 52)
    parsers: list[Callable[[str], Any]] = [functools.partial(latex_parser(), strict=True)]
    if _PLAIN_EXPRESSION.fullmatch(text) and "__" not in text:  # (no longer a safety check: see below)
        plain_first = re.search(r"[A-Za-z]{2,}", text) is not None
        parsers.insert(0 if plain_first else 1, parse_plain)
    return first_parse(text, parsers)


def first_parse(text: str, parsers: list[Callable[[str], Any]]) -> Any | None:
    """What the first parser that can read `text` makes of it; None when none can. A resource error
    (RecursionError, MemoryError) is a crash to report, not a "cannot read": it is raised."""
    for parse in parsers:
        try:
            return parse(text)
        except RESOURCE_ERRORS:
            raise
        except Exception:
            continue
    return None


# ---------------------------------------------------------------- plain expressions, without eval
#
# Answers come from model outputs and from datasets, so they are hostile input. sympy's `parse_expr`
# (and `sympify` on a string) ends in Python's `eval` with the builtins at hand: an answer such as
# `eval(chr(95)+chr(95)+...)` ran arbitrary code in the grader. `parse_plain` therefore reads the
# text with `ast.parse`, which only builds a syntax tree, and turns the few node types that make up
# arithmetic into sympy objects itself. Anything else (attribute access, subscripts, lambdas,
# comprehensions, keyword arguments, comparisons...) is refused, and names never reach Python's
# namespace: they become sympy constants, sympy functions from a fixed list, or plain Symbols.

_MAX_POWER_DIGITS = 100_000  # `9^9^9` has 369 million digits: refuse to compute it, don't hang on it
# names read as sympy's constants, as parse_expr read them; `e` stays a Symbol, as in the LaTeX
# parser, so that plain `e^2` and LaTeX `e^{2}` still compare equal
_PLAIN_CONSTANTS = frozenset({"pi", "E", "I", "oo", "zoo", "nan"})
# names that may be applied, each to one argument (no comma gets here): sympy functions of that name,
# and Python's `abs`, which parse_expr let through and sympy objects answer with Abs
_PLAIN_FUNCTIONS = {
    name: name
    for name in (
        "sqrt", "cbrt", "exp", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan",
        "acot", "asec", "acsc", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "Abs", "factorial", "floor",
        "ceiling", "re", "im", "conjugate", "arg", "gamma",
    )
} | {"abs": "Abs"}
_BINARY_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Python's bitwise operators, which parse_expr applies to sympy objects as Python does (`2^3` is 1
# there, `a&b` is And(a, b)): sympy's own operator methods, never anything looked up by name
_BITWISE_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
    ast.Mod: operator.mod,
}
_CONTAINERS: dict[type, Callable[[list], Any]] = {ast.Tuple: tuple, ast.List: list}


@dataclass(frozen=True)
class PlainDialect:
    """How `parse_plain` reads what it accepts. The default is this grader's reading ("^" a power,
    every other name a Symbol); `PARSE_EXPR` and `SYMPIFY` read as sympy's `parse_expr` with its
    default transformations and `sympify` of a string do, which is what TokenSkip's own grader calls
    (`tokenskip.grading.original`)."""

    caret_is_power: bool = True  # parse_expr's convert_xor (sympify applies it, parse_expr does not)
    # names that parse_expr would look up in sympy's namespace or Python's builtins (`N`, `S`, `max`,
    # `Rational`) are refused instead of being read as Symbols
    refuse_library_names: bool = False
    python_operators: bool = False  # `^ & | %` as Python applies them, tuples and lists as Python's
    raw_names: bool = False  # names as written (`ｅ`), not NFKC-folded as Python's parser folds them


PARSE_EXPR = PlainDialect(caret_is_power=False, refuse_library_names=True, python_operators=True, raw_names=True)
SYMPIFY = replace(PARSE_EXPR, caret_is_power=True)


@functools.cache
def _library_names() -> frozenset[str]:
    import builtins

    import sympy

    return frozenset(sympy.__all__) | frozenset(dir(builtins)) | {"True", "False", "None"}


def parse_plain(text: str, dialect: PlainDialect = PlainDialect()) -> Any:
    """`sqrt(2)/2`, `x^2+1`, `2*pi` as sympy, built node by node: the same objects parse_expr with
    its standard transformations gave (the operators are sympy's own), but nothing is evaluated as
    Python. Raises ValueError (or SyntaxError) for what is not plain arithmetic; RecursionError and
    MemoryError for trees too deep to walk, which the caller reports as a crash."""
    # `^` is a power, as parse_expr's convert_xor made it; it must become `**` before parsing, since
    # Python's `^` binds more loosely than `*` (`2*x^2` would read as `(2*x)^2`) and from the left
    source = text.strip()
    if dialect.caret_is_power:
        source = source.replace("^", "**")
    tree = ast.parse(source, mode="eval")  # a syntax tree only: nothing in it is run
    return _plain_node(tree.body, source, dialect)


def _plain_name(node: ast.Name, source: str, dialect: PlainDialect) -> str:
    if dialect.raw_names:
        return ast.get_source_segment(source, node) or node.id
    return node.id


def _plain_node(node: ast.AST, source: str, dialect: PlainDialect) -> Any:
    import sympy

    if isinstance(node, ast.Constant):
        return _plain_number(node, source)
    if isinstance(node, ast.Name):
        name = _plain_name(node, source, dialect)
        if name in _PLAIN_CONSTANTS:
            return getattr(sympy, name)
        if name in _PLAIN_FUNCTIONS:  # a bare `sqrt` is no number (parse_expr failed on it too)
            raise ValueError(f"function {name!r} without an argument")
        if dialect.refuse_library_names and name in _library_names():
            raise ValueError(f"{name!r} names a library object")
        return sympy.Symbol(name)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
        return _UNARY_OPERATORS[type(node.op)](_plain_node(node.operand, source, dialect))
    if isinstance(node, ast.BinOp) and (type(node.op) in _BINARY_OPERATORS
                                        or (dialect.python_operators and type(node.op) in _BITWISE_OPERATORS)):
        left, right = _plain_node(node.left, source, dialect), _plain_node(node.right, source, dialect)
        if isinstance(node.op, ast.Pow):
            _check_power_size(left, right)
        return {**_BINARY_OPERATORS, **_BITWISE_OPERATORS}[type(node.op)](left, right)
    if dialect.python_operators and type(node) in _CONTAINERS:
        return _CONTAINERS[type(node)]([_plain_node(element, source, dialect) for element in node.elts])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if any(isinstance(argument, ast.Starred) for argument in node.args):
            raise ValueError("starred argument")
        # the arguments are sympy objects built here, never a Python str: sympy functions sympify
        # (eval) a str argument, which is how `ｅｘｅｃ(chr(111)+...)` once ran through parse_expr
        arguments = [_plain_node(argument, source, dialect) for argument in node.args]
        name = _plain_name(node.func, source, dialect)
        if name not in _PLAIN_FUNCTIONS and dialect.refuse_library_names and name in _library_names():
            raise ValueError(f"{name!r} names a library function")
        # an unknown name applied to something is an undefined sympy function, as in parse_expr
        # (`f(3)`); it is a name only: sympy never looks it up or calls anything by it
        function = getattr(sympy, _PLAIN_FUNCTIONS[name]) if name in _PLAIN_FUNCTIONS else sympy.Function(name)
        return function(*arguments)
    raise ValueError(f"not plain arithmetic: {type(node).__name__}")


def _plain_number(node: ast.Constant, source: str) -> Any:
    """An integer, decimal or imaginary literal as parse_expr's auto_number read it: decimals from
    their digits (`0.1` is not the binary float 0.1), `2j` as 2*I."""
    from sympy import Float, I, Integer

    value = node.value
    if type(value) is int:  # bool is an int too, but `True` is not a number here
        return Integer(value)
    if type(value) not in (float, complex):  # a str above all: sympy would eval it when used
        raise ValueError(f"not a number: {type(value).__name__}")
    digits = (ast.get_source_segment(source, node) or repr(value)).replace("_", "")
    if type(value) is float:
        return Float(digits)
    digits = digits[:-1]  # the trailing j of `2j`
    return I * (Float(digits) if any(mark in digits for mark in ".eE") else Integer(int(digits)))


def _check_power_size(base: Any, exponent: Any) -> None:
    """Refuse an exact power of a number with more than `_MAX_POWER_DIGITS` digits: sympy would
    compute it (`9^9^9`) until the worker's time or memory limit ends it."""
    if not (getattr(base, "is_Rational", False) and getattr(exponent, "is_Rational", False)):
        return  # symbolic or floating-point powers are cheap to build
    size = max(abs(base.p), abs(base.q))
    if size <= 1:
        return
    # the result has about |exponent| * log10(size) digits, and log10(size) >= log10(2) > 1/4: an
    # exponent over 4 * _MAX_POWER_DIGITS is too large whatever the base (and is never made a float)
    if abs(exponent) > 4 * _MAX_POWER_DIGITS or abs(float(exponent)) * math.log10(size) > _MAX_POWER_DIGITS:
        raise ValueError("the power is too large to compute")


@functools.cache
def latex_parser() -> Callable[[str], Any]:
    """sympy's LaTeX parser, checked once. Without antlr4 4.11 it fails on every input, and a
    grader that swallows parse errors (as DeepSeek's does) would silently mark answers wrong."""
    from sympy.parsing.latex import parse_latex

    try:
        parse_latex("1")
    except ImportError as exc:
        raise UsageError(
            f"sympy cannot parse LaTeX answers ({exc}); install the runtime it was built for: "
            "pip install antlr4-python3-runtime==4.11.0"
        ) from None
    return parse_latex


# ---------------------------------------------------------------- the "math-verify" equivalence


def math_verify_equivalent(model_output: str, reference: str) -> bool:
    """Hugging Face Math-Verify's verdict on a whole model output against the gold answer.

    Its own timeouts use SIGALRM, which fails outside the main thread and cannot stop C code; they
    are turned off here, so call this under `Grader` for a hard limit.
    """
    guard_math_verify()
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=None)
    answer = parse(model_output, parsing_timeout=None)
    return bool(gold and answer and verify(gold, answer, timeout_seconds=None))


def math_verify_choice(model_output: str, reference: str, letters: str = "ABCD") -> bool:
    """Math-Verify's own reading of the option a model chose (a boxed or LaTeX letter first, then a
    bare letter), against the gold letter: an extraction independent of `parsing.extract_choice`."""
    guard_math_verify()
    from math_verify import LatexExtractionConfig, StringExtractionConfig, parse

    configs = [LatexExtractionConfig(), StringExtractionConfig(strings=tuple(letters))]
    found = parse(model_output, extraction_config=configs, parsing_timeout=None)
    chosen = re.sub(r"\\text\{|[^A-Za-z]", "", str(found[0])) if found else ""
    return chosen.upper() == reference.strip().upper()


def load_math_verify() -> None:
    """Load Math-Verify without its "timeout is disabled" warning: the worker pool is the timeout."""
    guard_math_verify()
    logging.getLogger("math_verify").setLevel(logging.ERROR)


# Math-Verify (0.9) reads LaTeX with latex2sympy2_extended, which builds sympy objects directly and
# passes only digit strings from its lexer to sympy's string parsing (`Number("12")`). Its reading
# of plain arithmetic (`1/2`, `3*(4+5)`) however ends in sympy's eval-based `parse_expr`; its regex
# lets only these characters through, which cannot name anything to call or look up:
_MATH_VERIFY_ARITHMETIC = re.compile(r"[0-9.\s+\-*/^()×÷]*")


@functools.cache
def guard_math_verify() -> None:
    """Make sure, in this process, that Math-Verify's `parse_expr` never sees more than arithmetic
    characters, whatever a later release's regex lets through: a Math-Verify without the function
    this wraps is refused rather than trusted."""
    import math_verify.parser as parser

    unguarded = getattr(parser, "parse_expr_cached", None)
    if unguarded is None:
        raise UsageError(
            "this Math-Verify release reads plain expressions differently from the 0.9 that tokenskip "
            "checked for safety; install math-verify==0.9.0"
        )

    def parse_arithmetic(expr: str) -> Any:
        if not _MATH_VERIFY_ARITHMETIC.fullmatch(expr):
            raise ValueError("not plain arithmetic")  # Math-Verify treats it as unparsable
        return unguarded(expr)

    parser.parse_expr_cached = parse_arithmetic

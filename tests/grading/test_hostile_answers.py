"""Hostile answers: text from a model's output or a dataset's gold answer is never run as Python.

sympy's `parse_expr` (and `sympify` on a string) ends in `eval` with the builtins at hand, so an
answer such as `\\boxed{exec(chr(111)+chr(112)+...)}` once ran arbitrary code in the grader, both in
a normal evaluation on a poisoned dataset and in `--regrade` of someone else's predictions. Every
payload here tries to create its own sentinel file, and is graded as a model's answer and as the
gold answer, in-process and through the worker pool with both graders; no sentinel may appear.
`test_the_payloads_are_armed` shows that they do create it when an eval-based parser reads them.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import CodeType

import pytest

from tokenskip.grading import graders as grading
from tokenskip.grading import original
from tokenskip.grading.equivalence import is_equivalent, math_verify_equivalent
from tokenskip.grading.graders import Grader, GradeRequest
from tokenskip.grading.parsing import normalize_answer

TIMEOUT_S = 10.0  # generous: only the sentinel matters here, not the verdict's speed


def chrs(code: str) -> str:
    """`code` spelled as `chr(111)+chr(112)+...`: no quote, comma or `__` for a filter to catch."""
    return "+".join(f"chr({ord(char)})" for char in code)


@dataclass(frozen=True)
class Payload:
    name: str
    answer: str  # what the model boxes, or what the dataset gives as the gold answer
    armed: bool  # whether sympy's parse_expr creates the sentinel from the whole normalised answer


# Python that creates the file at {path} (a quoted string) when run; `{command}` is `touch {path}`
OPEN = "open({path}, 'w')"
SHELL = "__import__('os').system({command})"
GETATTR = "getattr(__import__('builtins'), 'open')({path}, 'w')"
LAMBDA = "(lambda path: open(path, 'w'))({path})"
LISTCOMP = "[open({path}, 'w') for _ in range(1)]"
ATTRIBUTE = "__import__('io').open({path}, 'w').close()"
COMPILE = "exec(compile({opener}, 'x', 'exec'))"
GLOBALS = "globals()['open']({path}, 'w')"


def payloads(folder: Path) -> list[Payload]:
    """The corpus; payload `name` creates `folder/name` if anything runs it as Python."""
    corpus: list[Payload] = []

    def add(name: str, template: str, code: str = OPEN, armed: bool = True) -> None:
        """`template` with `{code}` replaced by `code` (aimed at this payload's sentinel) in chr()s,
        and `{raw}` by the same code as it is."""
        path = str(folder / name)
        command, opener = f"touch {shlex.quote(path)}", f"open({path!r}, 'w')"
        code = code.format(path=repr(path), command=repr(command), opener=repr(opener))
        corpus.append(Payload(name, template.replace("{code}", chrs(code)).replace("{raw}", code), armed))

    add("eval_chr", "eval({code})")
    add("exec_chr", "exec({code})")
    add("exec_chr_import_system", "exec({code})", SHELL)
    # the dunders built at run time, past the old `"__" not in text` check
    path = str(folder / "dunder_from_chr95")
    rest = f"('os').system({f'touch {shlex.quote(path)}'!r})"
    corpus.append(Payload("dunder_from_chr95", f"eval(chr(95)*2+{chrs('import')}+chr(95)*2+{chrs(rest)})", True))
    # sympy's own names for parsing a string with eval
    add("sympify_chr", "sympify({code})")
    add("S_chr", "S({code})")
    add("getattr_chr", "eval({code})", GETATTR)
    add("lambda_chr", "eval({code})", LAMBDA)
    add("listcomp_chr", "eval({code})", LISTCOMP)
    add("attribute_chr", "eval({code})", ATTRIBUTE)
    add("compile_chr", "exec({code})", COMPILE)
    add("globals_chr", "eval({code})", GLOBALS)
    # with PYTHONBREAKPOINT=os.system (set by the fixtures), breakpoint(cmd) runs cmd instead of pdb
    add("breakpoint_chr", "breakpoint({code})", "touch {path}")
    # LaTeX that normalisation strips, and hostile parts of larger answers
    add("latex_text", r"\text{exec({code})}")
    add("latex_mathrm", r"\mathrm{exec}({code})")
    add("power_of_exec", "2^exec({code})")
    # members of tuples and sets, and sides of equations, reach the parser one by one (so their
    # hostile part did too), never whole: hence not "armed" as a whole
    add("tuple_member", "(1,exec({code}))", armed=False)
    add("equation_side", "y=exec({code})", armed=False)
    add("set_member", r"\{1,exec({code})\}", armed=False)
    # a spelling that Python's parser folds (NFKC) into `exec`; parse_expr made it an undefined
    # function, which sympified (evaluated) its str argument
    add("fullwidth_exec", "ｅｘｅｃ({code})", armed=False)
    # spellings that the old character filter already stopped, kept as regressions
    add("import_plain", "{raw}", SHELL, armed=False)
    add("open_plain", "{raw}", armed=False)
    add("lambda_plain", "{raw}", LAMBDA, armed=False)
    add("listcomp_plain", "{raw}", LISTCOMP, armed=False)
    add("compile_plain", "{raw}", COMPILE, armed=False)
    add("globals_plain", "{raw}", GLOBALS, armed=False)
    add("attribute_plain", "(1).real", armed=False)
    add("subclasses_plain", "(1).__class__.__base__.__subclasses__()", armed=False)
    add("breakpoint_plain", "breakpoint()", armed=False)
    return corpus


@pytest.fixture(scope="module")
def folder():
    """Where the sentinels would appear: a short path, since every character of it is spelled out as
    chr() in the payloads and sympy's time on them grows with their length."""
    path = Path(tempfile.mkdtemp(prefix="sentinels-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def breakpoint_runs_a_command():
    """Make `breakpoint(cmd)` observable (it runs `cmd`) instead of waiting in pdb; set before any
    worker starts, since workers inherit the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONBREAKPOINT", "os.system")
        yield


@pytest.fixture(scope="module")
def grader(breakpoint_runs_a_command):
    with Grader(timeout=TIMEOUT_S, workers=2, graders=GRADER_NAMES) as shared:
        yield shared


GRADER_NAMES = ["tokenskip", "tokenskip-lenient", "math-verify"]
# TokenSkip's own grader reads these as `(1)`, as sympy's LaTeX parser in its (default) lenient mode
# drops the rest: `\boxed{(1).real}` is correct against a gold 1 there, as in the original; nothing runs
READ_AS_ONE_BY_TOKENSKIP = {"attribute_plain", "subclasses_plain"}


def requests_for(answer: str) -> list[GradeRequest]:
    boxed = "Let me think step by step. ... The final answer is: $\\boxed{%s}$"
    return [
        GradeRequest(boxed % answer, "1"),  # the model's answer
        GradeRequest(boxed % "1", answer),  # the dataset's gold answer
        GradeRequest(boxed % answer, answer),  # both
        GradeRequest(f"The final answer is {answer}. I hope it is correct.", answer),  # unboxed
    ]


# ---------------------------------------------------------------- code run while parsing, seen by an audit hook

_executed: list[CodeType] | None = None


def _record_executed_code(event: str, args: tuple) -> None:
    # "exec" is raised by eval() and exec() of a code object, also for each module imported; the
    # code compiled from a string at run time has a file name such as `<string>`
    code = args[0] if event == "exec" and args else None
    if _executed is not None and isinstance(code, CodeType) and code.co_filename.startswith("<"):
        _executed.append(code)


sys.addaudithook(_record_executed_code)  # hooks cannot be removed; it records only in `names_run`


def names_run(action) -> set[str]:
    """The names that code compiled from strings and run during `action()` refers to (nested code
    too)."""
    global _executed
    _executed = []
    try:
        action()
    finally:
        executed, _executed = _executed, None
    names: set[str] = set()
    while executed:
        code = executed.pop()
        names.update(code.co_names)
        executed.extend(const for const in code.co_consts if isinstance(const, CodeType))
    return names


# sympy legitimately evaluates `Integer (2 )` for the digits of LaTeX numbers, and the standard
# library generates code for dataclasses on import; what the payloads call must never run
PAYLOAD_NAMES = {
    "eval", "exec", "compile", "open", "__import__", "getattr", "globals", "breakpoint", "chr", "range",
    "sympify", "S", "system", "real", "__subclasses__", "__base__",
}


# ---------------------------------------------------------------- the tests


def test_the_corpus_has_the_variants_it_promises(folder):
    corpus = payloads(folder)
    assert len(corpus) >= 12
    assert len({payload.name for payload in corpus}) == len(corpus)


def test_the_payloads_are_armed(tmp_path, monkeypatch):
    """What made the old grader unsafe: the payloads pass the character filter that stood in front
    of sympy's `parse_expr` (no `__`, only `[\\w\\s.+\\-*/^()]`), and `parse_expr` then runs them."""
    import re

    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    canary = tmp_path  # not `folder`, which must stay empty
    monkeypatch.setenv("PYTHONBREAKPOINT", "os.system")
    armed = [payload for payload in payloads(canary) if payload.armed]
    assert len(armed) >= 12
    for payload in armed:
        text = normalize_answer(payload.answer)
        assert re.fullmatch(r"[\w\s.+\-*/^()]+", text) and "__" not in text, payload.name
        try:
            parse_expr(text, transformations=(*standard_transformations, convert_xor))
        except Exception:
            pass  # the harm is done during parsing, whatever the result
        assert (canary / payload.name).exists(), f"{payload.name} is not armed"


def test_hostile_answers_are_not_run_in_process(folder):
    """`is_equivalent`, TokenSkip's rules (`original`) and `math_verify_equivalent` called directly, with
    the answer on either side."""
    is_equivalent("x^2", r"\frac{x}{2}")  # warm up: imports run code of their own
    original.grade_math(r"\boxed{x^2}", r"\frac{x}{2}")
    math_verify_equivalent(r"$\boxed{x^2}$", "x")
    for payload in payloads(folder):
        answer = payload.answer

        def grade_both_ways():
            for prediction, reference in ((answer, "1"), ("1", answer), (answer, "x"), ("x", answer), (answer, answer)):
                is_equivalent(prediction, reference)
            # the default grader (TokenSkip's rules) turns text into sympy objects here, where the
            # original called parse_expr and N(): its full verdicts run in the workers below
            with contextlib.suppress(Exception):  # unparsable, or no number: only what ran matters
                original.numeric_value(original.read_answer(original.normalize(answer)))
            for request in requests_for(answer):
                math_verify_equivalent(request.model_output, request.reference)

        names = names_run(grade_both_ways)
        assert not list(folder.iterdir()), f"{payload.name} ran"
        assert not names & PAYLOAD_NAMES, f"{payload.name}: code naming {sorted(names & PAYLOAD_NAMES)} ran"
        assert not is_equivalent(answer, "1")


def test_hostile_answers_are_not_run_by_the_grader(grader, folder):
    """The real `Grader`: every grader, worker processes, the answer as the model's and as the gold."""
    corpus = payloads(folder)
    requests = [request for payload in corpus for request in requests_for(payload.answer)]
    grades = grader.grade(requests)
    assert not list(folder.iterdir()), f"ran: {sorted(path.name for path in folder.iterdir())}"
    assert len(grades) == len(requests)  # every record graded, none dropped
    for payload, start in zip(corpus, range(0, len(requests), len(requests_for("")))):
        against_one = grades[start]
        expected = {"tokenskip": payload.name in READ_AS_ONE_BY_TOKENSKIP, "tokenskip-lenient": False,
                    "math-verify": False}
        assert against_one.verdicts == expected, payload.name


# ---------------------------------------------------------------- crashes are recorded, not fatal

DEEP = "(" * 10_000 + "1" + ")" * 10_000


def test_a_crash_in_a_worker_is_recorded_and_the_record_kept(breakpoint_runs_a_command):
    with Grader(timeout=3.0, workers=2) as short:  # Math-Verify runs out of time on DEEP; don't wait long
        crashed, fine = short.grade([GradeRequest(rf"so $\boxed{{{DEEP}}}$", "1"), GradeRequest(r"$\boxed{2}$", "2")])
    assert crashed.correct is False
    assert crashed.prediction == DEEP
    assert crashed.errors["tokenskip"].startswith("RecursionError")
    assert crashed.verdicts["math-verify"] is False
    assert "math-verify" in crashed.errors or "math-verify" in crashed.timeouts
    assert fine.correct is True and not fine.errors


def test_a_plain_expression_too_deep_to_parse_is_a_crash_not_a_no():
    too_deep = "x+" * 100_000 + "x"  # a valid sum whose syntax tree is 100,000 levels deep
    with pytest.raises((RecursionError, MemoryError)):
        is_equivalent(f"sqrt({too_deep})", "1")


def test_a_crash_in_the_in_process_shortcut_is_recorded(monkeypatch):
    real = grading.GRADERS["tokenskip"]

    def crashing_shortcut(model_output, reference, question):
        if "crash" in model_output:
            raise RecursionError("maximum recursion depth exceeded")
        return real.shortcut(model_output, reference, question)

    monkeypatch.setitem(grading.GRADERS, "tokenskip", replace(real, shortcut=crashing_shortcut))
    with Grader(graders=["tokenskip"], timeout=TIMEOUT_S) as in_process:
        crashed, fine = in_process.grade([GradeRequest(r"crash \boxed{1}", "1"), GradeRequest(r"\boxed{1}", "1")])
        assert in_process._pool._workers == []  # both settled in-process
    assert crashed.correct is False
    assert crashed.verdicts == {"tokenskip": False}
    assert crashed.errors == {"tokenskip": "RecursionError: maximum recursion depth exceeded"}
    assert crashed.prediction == "1"
    assert fine.correct is True and not fine.errors


def test_plain_expressions_still_parse_as_sympy_read_them():
    from sympy import E, I, Rational, Symbol, pi, sqrt

    from tokenskip.grading.equivalence import parse_plain as _parse_plain

    x = Symbol("x")
    assert _parse_plain("sqrt(2)/2") == sqrt(2) / 2
    assert _parse_plain("2*x^2+1") == 2 * x**2 + 1  # `^` is a power, binding as tightly as `**`
    assert _parse_plain("2^3^2") == 512  # and from the right
    assert _parse_plain("pi/2+E+e") == pi / 2 + E + Symbol("e")
    assert _parse_plain("-3/4") == Rational(-3, 4)
    assert _parse_plain("abs(-2)+2j") == 2 + 2 * I
    for hostile in ("(1).real", "x[0]", "lambda: 1", "[1 for y in x]", "f(x=1)", "f(*x)", "True", "'a'", "sqrt"):
        with pytest.raises((ValueError, SyntaxError)):
            _parse_plain(hostile)
    with pytest.raises(ValueError, match="too large"):
        _parse_plain("9^9^9")

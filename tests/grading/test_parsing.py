"""Answer extraction and normalisation (tokenskip.grading.parsing)."""

from __future__ import annotations

import pytest

from tokenskip.grading.parsing import extract_answer, extract_boxed, normalize_answer


def test_boxed_contents_keep_nested_braces():
    assert extract_boxed(r"so $\boxed{\frac{1}{2}}$ and \boxed{x^{2}}") == [r"\frac{1}{2}", "x^{2}"]


def test_boxed_skips_escaped_braces_and_unclosed_boxes():
    assert extract_boxed(r"\boxed{\{1,2\}} then \boxed{\frac{1}{2") == [r"\{1,2\}"]


def test_boxed_without_braces_takes_one_token():
    assert extract_boxed(r"$\boxed 5$ and \fbox{6}") == ["5", "6"]


def test_boxed_is_not_a_prefix_of_longer_commands():
    assert extract_boxed(r"\boxedstuff{1}") == []


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"first \boxed{3}, then on reflection \boxed{4}.", "4"),
        (r"The final answer is: $\boxed{\dfrac{3}{4}}$", r"\frac{3}{4}"),
        (r"$\boxed{\left( 3, \frac{\pi}{2} \right)}$", r"(3,\frac{\pi}{2})"),
        ("So the answer is 42.", "42"),
        ("The answer is: **42 apples**.", "42"),
        (r"The final answer is $\frac12$. I hope it is correct.", r"\frac{1}{2}"),
        ("Thus the answer is 7 and we are done\nchecking 9", "7"),  # a number followed by words
        ("The answer is\n\nWe got 12 eggs", "12"),  # nothing after the phrase: fall back to the last number
        ("He paid $1,234 and then 5,000.50 in total", "5000.5"),
        ("3 - 5 = -2", "-2"),
        ("it costs .5 dollars", "0.5"),
        ("no digits here", ""),
        ("", ""),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("  42. ", "42"),  # surrounding blanks and a full stop
        (r"10,\!080", "10080"),  # \! and thousands separators
        ("1,000,000", "1000000"),
        (r"\text{Evelyn}", "Evelyn"),  # a \text{} wrapper
        (r"\dfrac{33}{100}", r"\frac{33}{100}"),
        (r"\tfrac{1}{3}", r"\frac{1}{3}"),
        (r"\cfrac{2}{5}", r"\frac{2}{5}"),
        (r"\left[ 1, 2 \right)", "[1,2)"),
        (r"5\text{ cm}", "5"),  # trailing units
        (r"5.4 \text{ cents}", "5.4"),
        (r"864 \mbox{ inches}^2", "864"),
        (r"3x + \text{a} - 1\text{ cm}", r"3x+\text{a}-1"),  # only the trailing unit goes
        (r"55^\circ", "55"),
        (r"90^{\circ}", "90"),
        (r"\$32,\!348", "32348"),
        ("$7$", "7"),
        (r"50\%", "50%"),
        (".5", "0.5"),
        ("-.25", "-0.25"),
        (r"3\cdot\sqrt{2}", r"3\sqrt{2}"),  # \cdot dropped as the lineage does ...
        (r"2 \cdot 3", r"2\cdot3"),  # ... but not between digits, where dropping it would make 23
        ("infinity", r"\infty"),
        (r"(-\infty, inf)", r"(-\infty,\infty)"),
        (r"\mathbf{v}", "v"),
        (r"12\mbox{ sq ft}", "12"),
        ("5.000", "5"),
        ("2.50", "2.5"),
        ("7.0 apples", "7apples"),
        (r"\sqrt2", r"\sqrt{2}"),
        (r"\sqrt 3 + 1", r"\sqrt{3}+1"),
        (r"\frac12", r"\frac{1}{2}"),
        (r"\frac 59", r"\frac{5}{9}"),
        (r"\frac9{19}", r"\frac{9}{19}"),
        (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}"),
        (r"\frac\pi2", r"\frac{\pi}{2}"),
        ("3/4", r"\frac{3}{4}"),
        ("-3/4", r"-\frac{3}{4}"),
        (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
        ("x/2", "x/2"),  # only integer (or root) quotients become \frac
        (r"x \in [-2,7]", "[-2,7]"),
        (r"1,\ 2,\, 3", "1,2,3"),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),  # row breaks survive
        ("1,2,", "1,2"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize(
    "raw", [r"\left( 3, \frac{\pi}{2} \right)", r"10,\!080", r"\frac 34\text{ m}", "x = .5", r"\$1,000"]
)
def test_normalisation_is_idempotent(raw):
    once = normalize_answer(raw)
    assert normalize_answer(once) == once

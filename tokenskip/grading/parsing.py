"""Find the final answer in a model's chain of thought and bring it to a canonical form.

The behaviour follows the DeepSeek-Math answer extraction that TokenSkip evaluates with, so our
accuracies stay comparable with the paper's. Where that code is plainly wrong (it turns `2\\cdot 3`
into `23`, or deletes a whole expression that happens to end in `\\text{...}`) we do the sensible
thing instead and say so next to the rule.
"""

from __future__ import annotations

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_PHRASE = re.compile(r"answer is", re.IGNORECASE)
# `$...$` (an escaped `\$`, as in `$\$32$`, is part of the span, not its end), `$$...$$`, `\(...\)`, `\[...\]`
_MATH_SPAN = re.compile(
    r"\$\$((?:\\.|[^\\$])+?)\$\$|\$((?:\\.|[^\\$])+)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL
)
_NUMBER = re.compile(r"-?\d*\.?\d+")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# "42 apples": a number followed only by plain words is that number, not "42apples"
_NUMBER_THEN_WORDS = re.compile(r"(-?\d[\d,]*(?:\.\d+)?|-?\.\d+)\s+[A-Za-z][A-Za-z ]*")


def extract_boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` (or `\\fbox`, or `\\boxed 5`) in order of appearance.

    Braces are matched, so nested groups survive; a box left open by a truncated output is skipped.
    """
    contents = []
    for match in _BOX_COMMAND.finditer(text):
        start = match.end()
        position = start
        while position < len(text) and text[position].isspace():
            position += 1
        if position < len(text) and text[position] == "{":
            end = _closing_brace(text, position)
            if end is not None:
                contents.append(text[position + 1 : end])
        elif position > start:
            argument = re.match(r"[^\s$]+", text[position:])
            if argument:
                contents.append(argument.group())
    return contents


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the `}` that closes the `{` at `open_at`; escaped braces (`\\{`) do not count."""
    depth = 0
    position = open_at
    while position < len(text):
        char = text[position]
        if char == "\\":
            position += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    return None


def extract_answer(text: str) -> str:
    """The model's final answer, normalised; empty when the text holds none.

    Looks, in order, for the last `\\boxed{}`, then the words "the answer is" (last occurrence),
    then the last number in the text.
    """
    boxed = extract_boxed(text)
    if boxed:
        return normalize_answer(boxed[-1])
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        stated = _answer_after_phrase(text[phrases[-1].end() :])
        if stated:
            return normalize_answer(stated)
    numbers = _NUMBER.findall(_THOUSANDS_COMMA.sub("", text))
    return normalize_answer(numbers[-1]) if numbers else ""


def _answer_after_phrase(tail: str) -> str:
    tail = tail.lstrip(" \t:*")
    math = _MATH_SPAN.match(tail)
    if math:
        return next(group for group in math.groups() if group is not None)
    stated = tail.split("\n", 1)[0].strip().rstrip("./*").strip()
    number_with_unit = _NUMBER_THEN_WORDS.fullmatch(stated)
    return number_with_unit.group(1) if number_with_unit else stated


def normalize_answer(answer: str) -> str:
    """Canonical spelling of an answer, so that equal answers usually compare equal as strings.

    Drops what does not change the value (units, degrees, dollar signs, `\\left`, spacing,
    trailing `.0`) and spells fractions and roots one way (`\\frac{1}{2}`, `\\sqrt{2}`).
    """
    text = answer.strip().replace("\n", "").rstrip(".")
    text = _unwrap_text_command(text)
    text = re.sub(r"\\[dtc]frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)
    text = re.sub(r"\\displaystyle(?![A-Za-z])", "", text)
    text = _drop_trailing_unit(text)
    text = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", text)
    text = text.replace("\\$", "").replace("$", "")
    text = re.sub(r"^[A-Za-z]\s*\\in(?![A-Za-z])", "", text.strip())  # "x \in [1,2]" -> "[1,2]"
    text = text.replace("\\%", "%")
    text = _drop_cdot(text)
    text = _spell_infinity(text)
    text = re.sub(r"\\(?:mathbf|mathrm|textbf|boldsymbol)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\mbox\{[^{}]*\}", "", text)
    text = re.sub(r"(\d)\.0+(?!\d)", r"\1", text)  # 5.00 -> 5
    text = re.sub(r"(\d\.\d*?[1-9])0+(?!\d)", r"\1", text)  # 2.50 -> 2.5
    text = re.sub(r"(?<![\w}])\.(?=\d)", "0.", text)  # .5 -> 0.5
    text = re.sub(r"\\sqrt\s*(-?[0-9.a-zA-Z]+)", r"\\sqrt{\1}", text)  # \sqrt2 -> \sqrt{2}
    text = _drop_spacing(text)
    text = _brace_frac_arguments(text)
    text = _slash_to_frac(text)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):  # 10,\!080 -> 10080
        text = text.replace(",", "")
    return re.sub(r"(?:\\\\|,|\.)+$", "", text)


def _unwrap_text_command(text: str) -> str:
    """`\\text{Evelyn}` is the answer "Evelyn" (only when the command spans the whole answer)."""
    if text.startswith("\\text{") and _closing_brace(text, len("\\text")) == len(text) - 1:
        return text[len("\\text{") : -1].strip()
    return text


def _drop_trailing_unit(text: str) -> str:
    """`5\\text{ cm}^2` -> `5`; an answer that is nothing but text is kept."""
    stripped = re.sub(r"\\(?:text|textrm|mbox)\{[^{}]*\}(?:\^\{?[23]\}?)?$", "", text).strip()
    return stripped or text


def _drop_cdot(text: str) -> str:
    """Drop `\\cdot` as the lineage does, except between two digits where it is a product."""
    text = re.sub(r"\s*\\cdot(?![A-Za-z])\s*", r"\\cdot", text)
    return re.sub(r"(?<!\d)\\cdot(?![A-Za-z])|\\cdot(?![A-Za-z\d])", "", text)


def _spell_infinity(text: str) -> str:
    text = text.replace("infinity", "\\infty").replace("∞", "\\infty")
    return re.sub(r"(?<!\\)\binf\b", r"\\infty", text)


def _drop_spacing(text: str) -> str:
    """Remove blanks and LaTeX spacing commands (`\\,`, `\\!`, `\\ `) but keep row breaks `\\\\`."""
    text = re.sub(r"(\\\\)|\\[,;:! ]", lambda match: match.group(1) or "", text)
    return re.sub(r"\s+", "", text)


def _brace_frac_arguments(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac{270}7` -> `\\frac{270}{7}` (TeX reads one token per argument)."""
    out = []
    copied = 0
    while (found := text.find("\\frac", copied)) != -1:
        position = found + len("\\frac")
        out.append(text[copied:position])
        for _ in range(2):
            argument = _next_argument(text, position)
            if argument is None:
                break
            braced, position = argument
            out.append(braced)
        copied = position
    out.append(text[copied:])
    return "".join(out)


def _next_argument(text: str, position: int) -> tuple[str, int] | None:
    """The TeX argument starting at `position` as a braced group, and the index after it."""
    if position >= len(text):
        return None
    if text[position] == "{":
        end = _closing_brace(text, position)
        return (text[position : end + 1], end + 1) if end is not None else None
    command = re.match(r"\\[A-Za-z]+", text[position:])
    token = command.group() if command else text[position]
    return "{" + token + "}", position + len(token)


def _slash_to_frac(text: str) -> str:
    """`3/4` -> `\\frac{3}{4}` when the whole answer is such a quotient (as the lineage does)."""
    operand = r"(\d+|\\sqrt\{\d+\})"
    quotient = re.fullmatch(rf"(-?){operand}/{operand}", text)
    if not quotient:
        return text
    sign, numerator, denominator = quotient.groups()
    return f"{sign}\\frac{{{numerator}}}{{{denominator}}}"


# ---------------------------------------------------------------- multiple choice

# GPQA's four options, lettered as lighteval and simple-evals letter them
CHOICE_LETTERS = "ABCD"
# Model outputs are hostile input: every repetition below is possessive (`*+`), so that no run of
# stars or spaces can make the regex engine try its exponentially many splits, and each pattern is
# matched in place (`match(text, position)`), never on a copied tail, so many phrases stay linear.
# "the answer is", "Answer:", "**Final Answer**:", "the correct option is", "correct choice:"
_CHOICE_PHRASE = re.compile(
    r"\b(?:answer|correct\s++(?:option|choice))\s*+(?:\*++\s*+)?(?:is\b|:)\s*+:?", re.IGNORECASE
)
# A letter after any opening wrappers: `(C)`, `**C**`, `$C$`, `\text{C}`, `\textbf{(C)}`, `[C]`.
_CHOICE_TOKEN = re.compile(
    r"\s*+(?P<wrap>(?:(?:\\(?:text|textbf|textrm|mathrm|mathbf)\s*+\{|\*++|\$|[(\[{])\s*+)*+)"
    r"(?P<letter>[A-Za-z])(?![A-Za-z0-9])"
)
# what may follow a letter that stands alone: closing wrappers and punctuation, then the line ends
_ALONE_UNTIL_LINE_END = re.compile(r"[ \t\r\f\v)\]}*$.,;:!]*+(?:\n|\Z)")


def extract_choice(text: str, letters: str = CHOICE_LETTERS) -> str:
    """The option letter a model chose, in upper case; empty when it states none.

    Looks, in order, for the last `\\boxed{}` that holds an option (`\\boxed{C}`, `\\boxed{(c)}`,
    `\\boxed{\\text{C}}`, `\\boxed{C) 4 nm}`); then the last stated answer ("the answer is (C)",
    "Answer: C", "**Final Answer:** c", "the correct option is C"); then a last line that holds
    nothing but an option ("C", "(C)", "**C**"). Letters elsewhere in the reasoning ("option B is
    wrong") never count, and a lower-case letter counts only where it cannot be the English word
    "a" ("(a)", "**a**", or alone at the end of its line), so "the answer is a bit larger" names
    no option. Pure regular expressions, linear in the text: the text is never evaluated.
    """
    for content in reversed(extract_boxed(text)):
        letter = _leading_choice(content, 0, letters, boxed=True)
        if letter:
            return letter
    for phrase in reversed(list(_CHOICE_PHRASE.finditer(text))):
        letter = _leading_choice(text, phrase.end(), letters, boxed=False)
        if letter:
            return letter
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    return _leading_choice(last_line, 0, letters, boxed=False, alone=True)


def _leading_choice(text: str, position: int, letters: str, *, boxed: bool, alone: bool = False) -> str:
    """The option letter `text` holds at `position` (after wrappers such as `(`, `**`, `\\text{`), or
    ""; `alone`: only when nothing but closing punctuation follows it on its line."""
    match = _CHOICE_TOKEN.match(text, position)
    if not match or match.group("letter").upper() not in letters.upper():
        return ""
    letter, end = match.group("letter"), match.end()
    ends_here = bool(_ALONE_UNTIL_LINE_END.match(text, end))
    if alone and not ends_here:
        return ""
    if boxed:
        # the whole box, or the option's letter before its text (`C) 4 nm`, `C: ...`); not `B^2`
        return letter.upper() if ends_here or text[end:end + 1] in (")", ".", ":") else ""
    if letter.isupper() or match.group("wrap") or ends_here:
        return letter.upper()
    return ""

"""What the README and docs/ show is what the checkout has: every path, command, flag, make target and
environment variable, and the MkDocs site builds with --strict.

Each checker returns the problems it finds (one line each), so a negative test can feed it a bad path or
a bad flag and see it reported. The checks parse text and argparse parsers; nothing runs a model.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.parsers import script_parsers

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# ---------------------------------------------------------------- reading markdown


@dataclass(frozen=True)
class Code:
    """A piece of code a document shows: a fenced block or an inline span."""

    where: str  # "README.md:12"
    text: str
    block: bool


@dataclass(frozen=True)
class Document:
    name: str
    code: tuple[Code, ...]
    links: tuple[tuple[str, str], ...]  # (where, target) of [text](target) outside code
    text: str = ""


INLINE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def parse_markdown(name: str, text: str) -> Document:
    code: list[Code] = []
    links: list[tuple[str, str]] = []
    lines = text.split("\n")
    fence: str | None = None
    block: list[str] = []
    block_start = 0
    paragraph: list[str] = []
    paragraph_start = 0

    def flush_paragraph() -> None:
        if not paragraph:
            return
        joined = "\n".join(paragraph)
        where = f"{name}:{paragraph_start}"
        code.extend(Code(where, match.group(2), False) for match in INLINE.finditer(joined))
        links.extend((where, target) for target in LINK.findall(INLINE.sub("", joined)))
        paragraph.clear()

    for number, line in enumerate(lines, 1):
        marker = re.match(r"^\s*(```|~~~)", line)
        if fence is None and marker:
            flush_paragraph()
            fence, block, block_start = marker.group(1), [], number + 1
        elif fence is not None and line.strip().startswith(fence):
            code.append(Code(f"{name}:{block_start}", "\n".join(block), True))
            fence = None
        elif fence is not None:
            block.append(line)
        elif not line.strip():
            flush_paragraph()
        else:
            if not paragraph:
                paragraph_start = number
            paragraph.append(line)
    flush_paragraph()
    assert fence is None, f"{name}: a code fence is not closed"
    return Document(name, tuple(code), tuple(links), text)


def soft_examples_document() -> Document:
    """soft_compress.py's help epilog: its example commands and paths are checked like the docs'."""
    from tokenskip.stages import soft

    return Document("tokenskip/stages/soft.py:EXAMPLES", (Code("tokenskip/stages/soft.py:EXAMPLES", soft.EXAMPLES,
                                                               True),), ())


@functools.cache
def documents() -> tuple[Document, ...]:
    docs = [parse_markdown(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")) for path in DOC_FILES]
    return (*docs, soft_examples_document())


# ---------------------------------------------------------------- path-like words

# the extensions that make a bare word a file name of the repository
SOURCE_SUFFIXES = (".py", ".sh", ".md", ".yaml", ".yml", ".toml", ".cff", ".txt", ".cfg", ".jinja")
# made by `make setup`, `make docs`: named in the docs, never committed
BUILT = (".venv", ".venv-vllm", "site", ".whl", ".pytest_cache")
# source files of other projects (the original TokenSkip checkout, llmlingua) and folders the reader picks:
# not files of this repository, though they look like them
EXTERNAL = ("data_processing/", "eval/", "llmlingua/", "ORIGINAL_VENV/", "ORIGINAL_CHECKOUT/")
# placeholders inside a path: any one component (or, alone as a component, any run of them)
PLACEHOLDER = re.compile(r"\{[^{},]*\}|<[^<>]*>|\.\.\.|…|γ|\*")

WORD = re.compile(r"[^\s`'\"()\[\];]+")


def path_words(text: str) -> list[str]:
    """The words of a piece of code that look like paths, `{a,b}` alternatives expanded."""
    words = []
    for raw in WORD.findall(text):
        word = raw.split("=", 1)[1] if re.match(r"^(--)?[\w-]+=", raw) else raw
        word = word.rstrip(",.:;")
        if word.startswith("./"):
            word = word[2:]
        if not word or "://" in word or word.startswith(("/", "~", "$", "-", "@", "#")):
            continue
        if "/" in word or word.endswith(SOURCE_SUFFIXES):
            words.extend(expand_braces(word))
    return words


def expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [expanded for option in match.group(1).split(",")
            for expanded in expand_braces(word[:match.start()] + option + word[match.end():])]


def component_matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, PLACEHOLDER.sub("*", pattern))


def is_wildcard(component: str) -> bool:
    return PLACEHOLDER.fullmatch(component) is not None


def prefix_matches(documented: list[str], expected: tuple[str, ...]) -> bool:
    """Whether `documented` (components, placeholders allowed) names `expected` or a folder above it; a bare
    `...` component stands for any run of components."""
    if not documented:
        return True
    head, rest = documented[0], documented[1:]
    if head in ("...", "…"):
        return any(prefix_matches(rest, expected[skip:]) for skip in range(len(expected) + 1))
    return bool(expected) and component_matches(head, expected[0]) and prefix_matches(rest, expected[1:])


# ---------------------------------------------------------------- the outputs tree, from tokenskip.core.layout

RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
BUDGETS = (64, 128, 256, 512, 1024)  # --budget-tokens values the docs may show


@functools.cache
def model_tree() -> tuple[tuple[str, ...], ...]:
    """Every path below `{output-dir}/{model-size}/` that a stage writes, built by tokenskip.core.layout."""
    from tokenskip.core import layout

    base = Path("M")
    paths: list[Path] = []
    run_files = (layout.PREDICTIONS, layout.METRICS, layout.RUN_SETTINGS, layout.GENERATION_LOG, layout.LOCK_FILE)
    runs = [layout.run_dir(base, method=method, ratio=ratio, data_type=split)
            for method in ("original", *layout.RATIO_METHODS) for ratio in RATIOS for split in ("train", "test")]
    runs += [layout.run_dir(base, method=method, ratio=1.0, data_type=split)
             for method in layout.RATIO_FREE_METHODS for split in ("train", "test")]
    runs += [layout.run_dir(base, method=method, ratio=1.0, data_type=split, budget_tokens=tokens)
             for method in layout.BUDGETED_METHODS for tokens in BUDGETS for split in ("train", "test")]
    for run in runs:
        samples = layout.samples_dir(run)
        paths += [samples / name for name in run_files]
        paths.append(layout.shard_dir(run, 0, 2) / layout.SAMPLES / layout.PREDICTIONS)
    stage1 = layout.stage1_samples(base)
    paths += [stage1 / layout.CORRECT, stage1 / layout.FORMATTED, layout.stage1_predictions(base)]
    for method in layout.COMPRESSION_FOLDERS:
        folder = layout.compression_dir(base, method)
        stem = layout.NER_RATIO_FILE_STEM if method == "ner" else layout.RATIO_FILE_STEM
        paths += [layout.ratio_file(folder, ratio, stem) for ratio in RATIOS[1:]]
        paths += [folder / layout.COMPRESSION_SUMMARY, folder / layout.LOCK_FILE]
    paths.append(layout.logs_dir(base) / "rank-1.log")
    return tuple(path.relative_to(base).parts for path in paths)


def report_files() -> tuple[str, ...]:
    from tokenskip.core import layout

    return (layout.REPORT_MARKDOWN, layout.REPORT_PLOT, layout.REPORT_ADHERENCE_PLOT, layout.REPORT_JSON)


@functools.cache
def demo_settings() -> tuple[str, str, str]:
    """scripts/demo.sh's DEMO_DIR default, OUTPUT_DIR (below it) and MODEL_SIZE, read from the script."""
    text = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8")
    demo_dir = re.search(r'^DEMO_DIR="\$\{DEMO_DIR:-([^}]+)\}"', text, re.M).group(1)
    output_dir = re.search(r'OUTPUT_DIR="\$DEMO_DIR/([^"]+)"', text).group(1).strip("/")
    model_size = re.search(r"\bMODEL_SIZE=(\S+)", text).group(1)
    return demo_dir, output_dir, model_size


@functools.cache
def demo_tree() -> tuple[tuple[str, ...], ...]:
    """Every path the demo writes below outputs/: the layout's tree for its model folder, its own folders
    (training data, adapter) and the report."""
    from tokenskip.core import layout

    demo_dir, output_dir, model_size = demo_settings()
    model_folder = layout.model_dir(Path(demo_dir) / output_dir, model_size)
    paths = [model_folder.parts + rel for rel in model_tree()]
    paths += [Path(demo_dir, name).parts for name in report_files()]
    paths += [Path(demo_dir, "llamafactory", "data", "dataset_info.json").parts,
              Path(demo_dir, "llamafactory", "data", "*.json").parts,
              Path(demo_dir, "adapter", "*").parts]
    return tuple(paths)


def recipe_adapters() -> set[str]:
    """The adapters the stage-4 recipes write: their `output_dir` below outputs/adapters/."""
    names = set()
    for recipe in (ROOT / "configs").rglob("*.yaml"):
        match = re.search(r"^output_dir:\s*outputs/adapters/(\S+)", recipe.read_text(encoding="utf-8"), re.M)
        if match:
            names.add(match.group(1).strip("/"))
    return names


def training_data_name() -> re.Pattern:
    from tokenskip.core import layout
    from tokenskip.data.benchmarks import TRAIN_BENCHMARKS

    pattern = re.escape(layout.TRAINING_DATA)
    for field, alternatives in (("benchmark", TRAIN_BENCHMARKS), ("method", tuple(layout.COMPRESSION_FOLDERS))):
        pattern = pattern.replace(re.escape("{" + field + "}"), "(" + "|".join(map(re.escape, alternatives)) + ")")
    for field in ("model_type", "size"):
        pattern = pattern.replace(re.escape("{" + field + "}"), r"[\w.]+")
    return re.compile(pattern)


SIZE = re.compile(r"^\d+(\.\d+)?[bBmM]$")
# folders of outputs/ whose names the user picks (--output-dir): anything below them is theirs
FREE_OUTPUTS = ("soft", "bench_control", "bench_baselines", "released-adapter")


def check_output_path(word: str) -> str | None:
    """A path below outputs/: the demo's must be in the demo's tree; a model folder's must follow the layout."""
    from tokenskip.data.benchmarks import BENCHMARKS

    parts = [part for part in word.split("/") if part]
    if parts[:1] != ["outputs"] or len(parts) == 1:
        return None
    if (ROOT / word).exists() and not (ROOT / word).is_dir():  # outputs/README.md
        return None
    rest = parts[1:]
    demo_dir = Path(demo_settings()[0]).parts
    if tuple(parts[:len(demo_dir)]) == demo_dir:
        if any(prefix_matches(parts, expected) for expected in demo_tree()):
            return None
        return f"{word}: not a path the demo writes (tokenskip.core.layout, scripts/demo.sh)"
    if rest[0] == "adapters":
        if len(rest) == 1 or is_wildcard(rest[1]) or rest[1] in recipe_adapters():
            return None
        return f"{word}: no recipe in configs/ writes this adapter (output_dir)"
    if len(rest) == 1 and rest[0].endswith(".json"):
        return None if training_data_name().fullmatch(rest[0]) else f"{word}: not stage 3's training-data name"
    tail = layout_tail(parts)
    if tail is not None and check_layout_relative("/".join(tail)):
        return f"{word}: not a path of the outputs layout (tokenskip.core.layout)"
    if is_wildcard(rest[0]) or rest[0] in FREE_OUTPUTS:
        return None
    # outputs/<model>/<benchmark>/<size>/<the layout's tree>
    if len(rest) == 1 or (len(rest) == 2 and rest[1] in report_files()):
        return None
    benchmark, below = rest[1], rest[2:]
    if not (is_wildcard(benchmark) or benchmark in BENCHMARKS):
        return f"{word}: not outputs/<model>/<benchmark>/<size>/ (no benchmark {benchmark!r})"
    if not below or (len(below) == 1 and below[0] in report_files()):
        return None
    if not (is_wildcard(below[0]) or SIZE.match(below[0])):
        return f"{word}: not outputs/<model>/<benchmark>/<size>/ ({below[0]!r} is not a model size)"
    if len(below) == 1 or any(prefix_matches(below[1:], expected) for expected in model_tree()):
        return None
    return f"{word}: not a path of the outputs layout (tokenskip.core.layout)"


def layout_folders() -> set[str]:
    from tokenskip.core import layout

    return set(layout.RUN_FOLDERS.values()) | set(layout.COMPRESSION_FOLDERS.values())


def layout_tail(parts: list[str]) -> list[str] | None:
    """The components from the first method or compression folder on, if the path has one."""
    folders = layout_folders()
    index = next((i for i, part in enumerate(parts) if part in folders), None)
    return None if index is None else parts[index:]


def check_layout_relative(word: str) -> str | None:
    """`Original/train/samples/...`, `{size}/TokenSkip/{γ}/`: a path inside a model folder."""
    parts = [part for part in word.split("/") if part]
    folders = layout_folders()
    if parts and is_wildcard(parts[0]) and len(parts) > 1 and parts[1] in folders:
        parts = parts[1:]
    if not parts or parts[0] not in folders:
        return None
    if any(prefix_matches(parts, expected) for expected in model_tree()):
        return None
    return f"{word}: not a path inside a model folder of the outputs layout (tokenskip.core.layout)"


@functools.cache
def documented_local_dirs() -> frozenset[str]:
    """models/X folders the docs themselves create (`hf download ... --local-dir models/X`)."""
    names = set()
    for document in documents():
        for code in document.code:
            names.update(re.findall(r"--local-dir\s+models/([^\s/]+)", code.text))
    return frozenset(names)


def check_model_path(word: str) -> str | None:
    """A path below models/: what download_models.py writes (the catalogue) or a folder the docs download to."""
    from tokenskip.models import catalogue, embedded, store

    parts = [part for part in word.split("/") if part]
    if parts[:1] != ["models"] or len(parts) == 1:
        return None
    repos = [catalogue.qwen_repo(size) for size in catalogue.QWEN_GB]
    repos += [catalogue.LLMLINGUA_LARGE, catalogue.LLMLINGUA_SMALL, catalogue.LLAMA3]
    known = {repo.split("/")[1] for repo in repos} | {embedded.NAME, store.ENV_FILE} | documented_local_dirs()
    released = {catalogue.adapter_repo(size).split("/")[1] for size in catalogue.ADAPTER_SIZES}
    name = parts[1]
    if is_wildcard(name) or name in known:
        return None
    if name == "released" and (len(parts) == 2 or parts[2] in released or is_wildcard(parts[2])):
        return None
    return f"{word}: download_models.py writes no such folder (tokenskip/models/catalogue.py)"


def check_data_path(word: str) -> str | None:
    """datasets/ and data/: committed files, or what download_models.py and stage 3 write there."""
    from tokenskip.data.benchmarks import DATASET_DIRS

    parts = [part for part in word.split("/") if part]
    if glob_exists(word):
        return None
    if parts[0] == "datasets" and len(parts) >= 2 and (is_wildcard(parts[1]) or parts[1] in DATASET_DIRS.values()
                                                       or any(component_matches(parts[1], folder)
                                                              for folder in DATASET_DIRS.values())):
        return None
    if parts[0] == "data" and len(parts) == 2 and (parts[1] == "dataset_info.json"
                                                   or training_data_name().fullmatch(parts[1])):
        return None
    return f"{word}: no such file in the checkout, and not one download_models.py or stage 3 writes"


def glob_exists(word: str) -> bool:
    pattern = PLACEHOLDER.sub("*", word.rstrip("/"))
    return any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / pattern).exists()


@functools.cache
def repository_names() -> frozenset[str]:
    return frozenset(path.name for path in ROOT.iterdir() if path.name != ".git")


@functools.cache
def file_names() -> frozenset[str]:
    result = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return frozenset(Path(line).name for line in result.stdout.splitlines())


def check_path(word: str) -> str | None:
    """One path-like word: None when it names what the checkout has (or a run writes), else the problem."""
    if word.startswith(EXTERNAL) or word.startswith("../"):
        return None
    parts = [part for part in word.split("/") if part]
    if not parts:
        return None
    top = parts[0]
    if top in BUILT:
        return None
    if top == "outputs":
        return check_output_path(word)
    if top == "models":
        return check_model_path(word)
    if top in ("data", "datasets") and len(parts) > 1:
        return check_data_path(word)
    if top in layout_folders() or (is_wildcard(top) and len(parts) > 1 and parts[1] in layout_folders()):
        return check_layout_relative(word)
    if "/" not in word:  # a bare file name: some file of the checkout has it, or a run writes it
        if is_wildcard(word) or word in report_files() or any(component_matches(word, name) for name in file_names()):
            return None
        return f"{word}: no file of that name in the checkout"
    if is_wildcard(top):
        return None  # relative to a folder the text names
    if top not in repository_names():
        # a folder of the reader's machine or of another project (`core/` in the package tree is inside tokenskip/)
        return f"{word}: no such file in the checkout" if word.endswith(SOURCE_SUFFIXES) else None
    return None if glob_exists(word) else f"{word}: no such file or folder in the checkout"


def heading_anchors(document: Document) -> set[str] | None:
    """The anchors GitHub gives the README's headings (docs/ pages' anchors are mkdocs --strict's job)."""
    if document.name != "README.md":
        return None
    headings = [line.lstrip("#").strip() for code_free in re.split(r"^```.*?^```", document.text, flags=re.M | re.S)
                for line in code_free.split("\n") if re.match(r"^#{1,6} ", line)]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def path_problems(document: Document) -> list[str]:
    problems = []
    for code in document.code:
        for word in path_words(code.text):
            problem = check_path(word)
            if problem:
                problems.append(f"{code.where}: {problem}")
    anchors = heading_anchors(document)
    for where, target in document.links:
        if target.startswith("#") and anchors is not None:
            if target[1:] not in anchors:
                problems.append(f"{where}: no heading has the anchor {target}")
            continue
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        base = (ROOT / document.name).parent
        if not (base / target.split("#", 1)[0]).exists():
            problems.append(f"{where}: the link {target} leads nowhere")
    return problems


# ---------------------------------------------------------------- commands


@functools.cache
def parsers() -> dict[str, argparse.ArgumentParser]:
    return script_parsers()


# words that stand for a value the reader fills in, and what the parser is given instead
PLACEHOLDER_VALUES = {"γ": "0.5", "$SLURM_ARRAY_TASK_ID": "0", "ORIGINAL_CHECKOUT": "x"}
ELISIONS = ("...", "…")


def bench_flags(script: Path) -> set[str]:
    """The option strings a bench script's argparse parser defines (read from its source, not imported)."""
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(arg.value for arg in node.args
                         if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"))
    return flags


def simple_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;` and `|`; redirections dropped."""
    commands = []
    for line in text.replace("\\\n", " ").split("\n"):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # not shell (an unbalanced quote in a listing)
            continue
        current: list[str] = []
        skip_next = False
        for token in tokens:
            if skip_next:
                skip_next = False
                continue
            if token and set(token) <= set(";&|"):
                commands.append(current)
                current = []
            elif token and set(token) <= set("<>&"):
                skip_next = True  # a redirection and its target
                if current and current[-1].isdigit():
                    current.pop()  # the descriptor of `2>&1`
            else:
                current.append(token)
        commands.append(current)
    return [command for command in commands if command]


def split_assignments(command: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    index = 0
    while index < len(command) and re.fullmatch(r"[A-Za-z_]\w*=.*", command[index]):
        name, value = command[index].split("=", 1)
        env[name] = value
        index += 1
    rest = command[index:]
    while rest and rest[0] in ("nohup", "nice", "time", "exec"):
        rest = rest[3:] if rest[0] == "nice" and rest[1:2] == ["-n"] else rest[1:]
    return env, rest


def is_python(word: str) -> bool:
    return re.fullmatch(r"(\S*/)?python3?(\.\d+)?", word) is not None


def check_command(command: list[str], elided: bool = False) -> list[str]:
    """A command invoking one of the toolkit's scripts, a bench script, make or a stage shell script. An
    elided command (`...` in it, or a script's flags quoted in a sentence) may leave out required arguments."""
    env, words = split_assignments(command)
    if not words:
        return []
    if words[0] == "make":
        return check_make(words[1:])
    if words[0] == "bash" and len(words) > 1:
        words = words[1:]
    if words[0].endswith(".sh") and not words[0].startswith("bench/") and not is_wildcard(Path(words[0]).stem):
        return check_script_env(words[0], env)
    if not is_python(words[0]) or len(words) < 2:
        return []
    script, args = words[1].removeprefix("./"), words[2:]
    if script == "-m" and args:
        script, args = f"-m {args[0]}", args[1:]
    if script.startswith("bench/") and script.endswith(".py"):
        return check_bench(script, args)
    parser = parsers().get(script)
    if parser is None or "-h" in args or "--help" in args:
        return []
    elided = elided or any(arg in ELISIONS for arg in args)
    argv = [PLACEHOLDER_VALUES.get(arg, arg) for arg in args if arg not in ELISIONS]
    from tokenskip.core.errors import UsageError

    try:
        parser.parse_args(argv)
    except (UsageError, SystemExit) as exc:
        message = str(exc)
        if elided and "arguments are required" in message:
            return []
        return [f"{script} {' '.join(args)}: {message}"]
    return []


def check_bench(script: str, args: list[str]) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        return [f"{script}: no such bench script"]
    known = bench_flags(path)
    unknown = [arg for arg in args if arg.startswith("-") and arg.split("=", 1)[0] not in known]
    return [f"{script}: no flag {flag} in its parser" for flag in unknown]


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def check_make(args: list[str]) -> list[str]:
    targets = [arg for arg in args if not arg.startswith("-") and "=" not in arg]
    return [f"make {target}: no such target in the Makefile" for target in targets if target not in make_targets()]


def script_text(script: str, seen: set[str] | None = None) -> str:
    """A stage script's text with what it sources (scripts/common.sh) and the scripts it runs (eval.sh)."""
    seen = set() if seen is None else seen
    path = ROOT / script
    if script in seen or not path.is_file():
        return ""
    seen.add(script)
    text = path.read_text(encoding="utf-8")
    called = re.findall(r"(?:\bbash|\bexec bash|^\.|\bsource)\s+\.?/?((?:scripts/)?[\w.-]+\.sh)", text, re.M)
    return text + "".join(script_text(name, seen) for name in called)


def check_script_env(script: str, env: dict[str, str]) -> list[str]:
    script = script.removeprefix("./")
    text = script_text(script)
    if not text:
        return [f"{script}: no such script"]
    return [f"{name}=... {script}: the script reads no {name}" for name in env
            if not re.search(rf"\b{re.escape(name)}\b", text)]


INVOCATION = re.compile(r"(^|\s)(make\s|bash\s|\S*python3?\s|\S*\.sh\b)")


def inline_command(text: str) -> tuple[str, bool] | None:
    """The command an inline span shows, and whether it is only an excerpt: `python X.py ...`, `make t`,
    `bash eval.sh`, or a script's name with some of its flags (`evaluation.py --data-type train`)."""
    text = " ".join(text.split())  # a span may wrap across lines
    first, _, rest = text.partition(" ")
    if first in parsers() and rest:
        return f"python {text}", True
    return (text, False) if INVOCATION.search(text) else None


def command_problems(document: Document) -> list[str]:
    problems = []
    for code in document.code:
        shown = (code.text, False) if code.block else inline_command(code.text)
        if shown is None:
            continue
        for command in simple_commands(shown[0]):
            problems += [f"{code.where}: {problem}" for problem in check_command(command, elided=shown[1])]
    return problems


# ---------------------------------------------------------------- the checks on the real documents


DOCUMENT_NAMES = [path.relative_to(ROOT).as_posix() for path in DOC_FILES] + ["tokenskip/stages/soft.py:EXAMPLES"]


def document(name: str) -> Document:
    return next(doc for doc in documents() if doc.name == name)


@pytest.mark.parametrize("name", DOCUMENT_NAMES)
def test_every_path_shown_exists(name):
    assert path_problems(document(name)) == []


@pytest.mark.parametrize("name", DOCUMENT_NAMES)
def test_every_command_shown_parses(name):
    assert command_problems(document(name)) == []


def test_the_checks_see_the_commands_and_paths():
    """The extraction finds what the README shows: a check that reads nothing would pass vacuously."""
    readme = document("README.md")
    commands = [command for code in readme.code if code.block for command in simple_commands(code.text)]
    invoked = {words[1] for _, words in map(split_assignments, commands) if len(words) > 1}
    assert {"evaluation.py", "LLMLingua.py", "get_llamafactory_input.py", "download_models.py", "report.py",
            "demo", "test", "eval.sh"} <= invoked
    words = {word for code in readme.code for word in path_words(code.text)}
    assert "configs/examples/train_lora/myllama3_lora_sft_compressed_gsm8k_llmlingua2_qwen_7B.yaml" in words
    assert any(word.startswith("outputs/demo/") for word in words)


def test_soft_compress_examples_name_the_demo_paths():
    from tokenskip.core import layout
    from tokenskip.stages import soft

    demo_dir, output_dir, model_size = demo_settings()
    model_folder = layout.model_dir(Path(demo_dir) / output_dir, model_size)
    assert str(layout.stage1_predictions(model_folder)) in soft.EXAMPLES
    assert str(layout.original_samples(model_folder, "test") / layout.PREDICTIONS) in soft.EXAMPLES


def test_every_page_is_in_the_nav():
    """mkdocs --strict also says so; this needs no mkdocs."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {path.relative_to(ROOT / "docs").as_posix() for path in (ROOT / "docs").rglob("*.md")}
    assert {page for page in pages if not re.search(rf":\s*{re.escape(page)}\s*$", nav, re.M)} == set()


def demo_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """The rows of every markdown table with `method` and `target γ` columns, by (method, γ)."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    header: list[str] | None = None
    for line in text.split("\n"):
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            row = dict(zip(header, cells))
            if "method" in row and "target γ" in row:
                rows.setdefault((row["method"], row["target γ"]), {}).update(row)
    return rows


def test_the_readme_demo_table_is_copied_from_the_full_tables():
    full = demo_rows((ROOT / "docs" / "demo.md").read_text(encoding="utf-8"))
    short = demo_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    same_as = {"mean CoT tokens": "CoT tokens"}  # the README's name for the full table's column
    assert short
    for key, row in short.items():
        for column, value in row.items():
            assert full[key][same_as.get(column, column)] == value, (key, column)


def test_the_control_tables_are_the_committed_results():
    """The γ-control tables of the README and docs/control.md are `bench/bench_control.py --render` of the committed
    results file, row for row: a figure there is a measured one."""
    command = [sys.executable, "bench/bench_control.py", "--render", "bench/results/control_scale.json"]
    rendered = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = {line for line in rendered.splitlines() if line.startswith("|")}
    for name in ("README.md", "docs/control.md"):
        shown = [line for line in (ROOT / name).read_text(encoding="utf-8").splitlines()
                 if line.startswith(("| adapter", "| base model"))]
        assert shown, name
        assert [line for line in shown if line not in rows] == [], name


def test_the_baseline_tables_are_the_committed_results():
    """docs/baselines.md's measured tables (every method, the adapter among them, and the budget-forcing checks) are
    `bench/bench_baselines.py --render` of the committed results file, line for line."""
    command = [sys.executable, "bench/bench_baselines.py", "--render", "bench/results/baselines.json"]
    rendered = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = set(rendered.splitlines())
    text = (ROOT / "docs" / "baselines.md").read_text(encoding="utf-8")
    measured = text[text.index("Measured on"):].split("\n## ")[0]
    shown = [line for line in measured.splitlines() if line.startswith(("|", "`python"))]
    assert len(shown) > 10
    assert [line for line in shown if line not in lines] == []


# ---------------------------------------------------------------- each checker fails on a bad input


def test_path_checker_reports_a_missing_file():
    assert check_path("scripts/demo.sh") is None
    assert check_path("configs/examples/train_lora/...yaml") is None
    assert "no such file" in check_path("scripts/no_such_script.sh")
    assert "no such file" in check_path("configs/examples/train_lora/...yml")
    assert check_path("tokenskip/core/no_such.py") is not None
    assert check_path("no_such_entry_point.py") is not None


def test_path_checker_reports_a_demo_path_the_demo_does_not_write():
    assert check_path("outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/Original/train/samples/predictions.jsonl") is None
    assert check_path("outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/TokenSkip/<γ>/samples/") is None
    assert check_path("outputs/demo/results.md") is None
    wrong = "outputs/demo/SmolLM2-135M-Instruct/Original/train/…"
    assert "not a path the demo writes" in check_path(wrong)
    assert check_path("outputs/demo/SmolLM2-135M-Instruct/gsm8k/7b/Original/train/samples/") is not None
    assert check_path("outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/Original/train/sample/") is not None


def test_path_checker_reports_other_layout_mistakes():
    ner = "outputs/Qwen2.5-7B-Instruct/gsm8k/7b/NER_Enhanced_Compression/"
    assert check_path(ner + "train_outputs_ner_enhanced_compressed_ratio_0.5.jsonl") is None
    assert check_path(ner + "train_outputs_compressed_ratio_0.5.jsonl") is not None  # NER's files have their own stem
    assert check_path("outputs/.../NER_Enhanced_Compression/train_outputs_compressed_ratio_0.5.jsonl") is not None
    assert check_path("outputs/Qwen2.5-7B-Instruct/gsm8k/Original/train/samples/predictions.jsonl") is not None
    assert check_path("outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Compresion/") is not None
    assert check_path("outputs/adapters/TokenSkip-Qwen2.5-7B-Instruct-GSM8K") is None
    assert check_path("outputs/adapters/TokenSkip-Qwen2.5-7B-Instruct") is not None
    assert check_path("Original/train/samples/predictions.jsonl") is None
    assert check_path("TokenSkip/{γ}/sample/predictions.jsonl") is not None
    assert check_path("models/Qwen2.5-7B-Instruct") is None
    assert check_path("models/Qwen2.5-7B-Instrct") is not None


def test_link_checker_reports_a_broken_link():
    doc = parse_markdown("README.md", "See [the demo](docs/demo.md) and [nothing](docs/nothing.md).\n")
    assert path_problems(doc) == ["README.md:1: the link docs/nothing.md leads nowhere"]
    toc = parse_markdown("README.md", "1. [Quickstart](#quickstart) 2. [Gone](#gone)\n\n## Quickstart\n")
    assert path_problems(toc) == ["README.md:1: no heading has the anchor #gone"]


def test_command_checker_reports_a_bad_flag():
    assert check_command(shlex.split("python evaluation.py --use_adapter --compression_ratio 0.9 0.5")) == []
    [problem] = check_command(shlex.split("python evaluation.py --use-adaptor"))
    assert "unrecognized arguments: --use-adaptor" in problem
    assert check_command(shlex.split(".venv/bin/python LLMLingua.py --no-such-flag 1")) != []
    assert check_command(shlex.split("python soft_compress.py train --output-dir x")) != []  # --input is required
    assert check_command(shlex.split("python LLMLingua.py --num-shards 4 --merge-shards ...")) == []  # elided
    assert check_command(shlex.split("python report.py")) != []  # its folder is required
    assert check_command(shlex.split("python soft_compress.py --help")) == []
    # a script's flags quoted in a sentence: the flags must exist, required ones may be left out
    assert command_problems(parse_markdown("x.md", "`CTS_data_get.py --selection authors` or\n"
                                                   "`evaluation.py --compression_ratio γ`\n")) == []
    assert command_problems(parse_markdown("x.md", "`evaluation.py --compresion_ratio 0.5`\n")) != []


def test_bench_checker_reports_a_bad_flag():
    assert check_command(shlex.split(".venv/bin/python bench/bench_shards.py --json OUT.json")) == []
    assert check_command(shlex.split(".venv/bin/python bench/bench_shards.py --jsn OUT.json")) != []
    assert check_command(shlex.split("python bench/no_such_bench.py")) != []


def test_make_checker_reports_a_missing_target():
    assert check_make(["demo"]) == [] and check_make(["test"]) == []
    assert check_make(["no-such-target"]) == ["make no-such-target: no such target in the Makefile"]
    assert command_problems(parse_markdown("x.md", "Run `make setup && make no-such-target`.\n")) != []


def test_env_checker_reports_a_variable_the_script_does_not_read():
    assert check_command(shlex.split('USE_ADAPTER=0 RATIOS="0.9 0.5" bash eval.sh')) == []
    assert check_command(shlex.split("METHOD=ner bash scripts/2_compress.sh")) == []
    assert check_command(shlex.split("RATIOS=1.0 bash scripts/5_evaluate.sh")) == []  # eval.sh reads it
    [problem] = check_command(shlex.split("NO_SUCH_SETTING=1 bash eval.sh"))
    assert "reads no NO_SUCH_SETTING" in problem
    assert check_command(shlex.split("X=1 bash scripts/no_such.sh")) != []


def test_markdown_reader_finds_inline_code_blocks_and_links():
    doc = parse_markdown("x.md", "Text `a/b.py` and\n`multi\nline` [l](y.md).\n\n```bash\nmake demo\n```\n")
    assert [(code.text, code.block) for code in doc.code] == [("a/b.py", False), ("multi\nline", False),
                                                              ("make demo", True)]
    assert doc.links == (("x.md:1", "y.md"),)


# ---------------------------------------------------------------- the site builds


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=120)


needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="mkdocs is not installed: make setup-docs (requirements-docs.txt)")


@needs_mkdocs
def test_mkdocs_build_strict_passes(tmp_path):
    result = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


@needs_mkdocs
def test_mkdocs_build_strict_fails_on_a_broken_link(tmp_path):
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "index.md", "a", encoding="utf-8") as handle:
        handle.write("\n[a page that is not there](no-such-page.md)\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr

"""The package's import rules, read from the source: stages are command faces that lean on the
layers below them, never on each other, and nothing below them imports a stage; bench/ and tests/
share testkit/, so bench/ imports nothing from tests/."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "tokenskip"
SHARED_BY_STAGES = {"tokenskip.stages.flags"}  # the flags several stages declare: not a stage


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def stage_modules() -> set[str]:
    return {module_name(p) for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py"} - SHARED_BY_STAGES


def test_stages_import_no_other_stage():
    stages = stage_modules()
    assert len(stages) >= 7
    for path in (PACKAGE / "stages").glob("*.py"):
        leaning = imported_modules(path) & (stages - {module_name(path)})
        assert not leaning, f"{path.name} imports the stage(s) {sorted(leaning)}: move what they share below stages/"


def test_nothing_below_the_stages_imports_one():
    stages = stage_modules() | SHARED_BY_STAGES
    for path in PACKAGE.rglob("*.py"):
        if "stages" in path.relative_to(PACKAGE).parts:
            continue
        assert not imported_modules(path) & stages, f"{path.relative_to(ROOT)} imports a stage"


def test_bench_imports_nothing_from_tests():
    for path in (ROOT / "bench").glob("*.py"):
        offending = {name for name in imported_modules(path) if name == "tests" or name.startswith("tests.")}
        assert not offending, f"{path.name} imports {sorted(offending)}: shared fixtures belong in testkit/"


def test_outputs_readme_is_written_from_the_layout_module():
    """outputs/README.md lists the whole tree as tokenskip/core/layout.py defines it: regenerate it with
    `python -m tokenskip.core.layout readme > outputs/README.md` when the layout changes."""
    from tokenskip.core import layout

    committed = (ROOT / "outputs" / "README.md").read_text(encoding="utf-8")
    assert committed == layout.outputs_readme()
    for folder in [*layout.RUN_FOLDERS.values(), *layout.COMPRESSION_FOLDERS.values(), layout.ADAPTERS]:
        assert f"/{folder}/" in committed
    assert layout.NER_RATIO_FILE_STEM in committed and layout.REPORT_ADHERENCE_PLOT in committed

"""The wheel holds the whole package, and a non-editable install of it imports every module.

The editable install that `make setup` makes reads tokenskip/ from the checkout, so it hides a
wheel that leaves subpackages out (as `packages = ["tokenskip"]` once did: 25 files, no backends/).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT

PACKAGE = ROOT / "tokenskip"


def modules_in_checkout() -> set[str]:
    return {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}


def test_the_wheel_holds_every_module_and_an_install_of_it_imports_them(tmp_path):
    # built from a copy of what the build reads: an in-tree build/ left by an earlier build would
    # put back into the wheel what the configuration leaves out
    source = tmp_path / "source"
    shutil.copytree(PACKAGE, source / "tokenskip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, text=True,
                   cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("tokenskip-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("tokenskip/") and name.endswith(".py")}
    assert in_wheel == modules_in_checkout()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    probe = ("import importlib, pkgutil, tokenskip\n"
             "names = [m.name for m in pkgutil.walk_packages(tokenskip.__path__, 'tokenskip.')]\n"
             "for name in names: importlib.import_module(name)\n"
             "print(tokenskip.__file__); print(len(names))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    where, count = result.stdout.split()
    assert where.startswith(str(site)), f"imported {where}, not the installed wheel"
    assert int(count) == len(in_wheel) - 1  # every module and subpackage but tokenskip itself, imported

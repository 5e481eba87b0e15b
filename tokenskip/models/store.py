"""The local side of downloads: partial folders renamed into place when whole, what is already
there, disk space and write checks, and paths.env (the paths the shell scripts source)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import atomic_writer
from tokenskip.models import embedded
from tokenskip.models.catalogue import Fetch, human

PARTIAL_DIR = ".partial"
ENV_FILE = "paths.env"
DISK_MARGIN = 1.10
_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


def partial_dir(item: Fetch) -> Path:
    return item.target.parent / PARTIAL_DIR / item.target.name


def _interrupted_in_place(folder: Path) -> bool:
    """A folder another tool downloaded straight into, left with unfinished files."""
    return any((folder / ".cache" / "huggingface" / "download").rglob("*.incomplete"))


def is_complete(item: Fetch) -> bool:
    if item.kind == "embedded":
        return embedded.is_materialized(item.target)
    if item.kind == "dataset":
        return item.target.is_file()
    return item.target.is_dir() and not _interrupted_in_place(item.target)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def bytes_to_fetch(item: Fetch) -> int:
    if is_complete(item):
        return 0
    if item.kind != "model":
        return item.size
    done = _folder_bytes(partial_dir(item)) + _folder_bytes(item.target)
    return max(item.size - done, 0)


def status_of(item: Fetch) -> str:
    if is_complete(item):
        return "present, skipped"
    if item.kind == "model" and (partial_dir(item).exists() or item.target.exists()):
        return "partial, resumes"
    return "to fetch"


def check_plan_writable(items: list[Fetch], base_dir: Path) -> None:
    """Refuse a folder that cannot be written (a path through a file, a read-only folder) before the
    hub is asked or the embedded model extracted, rather than with a traceback after the work."""
    fix = "choose another --base-dir"
    for item in items:
        if is_complete(item):
            continue
        if item.target.exists() and not item.target.is_dir() and item.kind != "dataset":
            raise UsageError(f"{item.target} is a file, not a model folder: move it away, or {fix}")
        # datasets go to datasets/ under the current folder, whatever --base-dir says
        where = fix if item.kind != "dataset" else "run download_models.py from the project root"
        embedded.check_writable(item.target.parent, where)
    if any(item.env_key for item in items):  # paths.env is written there even when all is present
        embedded.check_writable(base_dir, fix)


def check_disk_space(base_dir: Path, needed: int) -> None:
    """Refuse to start a download that cannot fit (with a 10% margin) on the base dir's disk."""
    probe = base_dir.absolute()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    required = int(needed * DISK_MARGIN)
    if free < required:
        raise UsageError(
            f"not enough disk space under {probe}: {human(free)} free, {human(required)} needed "
            f"({human(needed)} + 10% margin); free some space, choose another --base-dir, "
            "or pass --skip-disk-check")


def update_paths_env(path: Path, values: dict[str, str]) -> None:
    """Set `KEY=value` lines in a shell-sourceable file, keeping its other lines; written atomically."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [
        f"# Written by download_models.py; eval.sh and the stage scripts source it: . {path}"]
    pending = dict(values)
    for i, line in enumerate(lines):
        match = _ENV_LINE.match(line)
        if match and match.group(1) in pending:
            key = match.group(1)
            lines[i] = f"{key}={shlex.quote(pending.pop(key))}"
    lines += [f"{key}={shlex.quote(value)}" for key, value in pending.items()]
    with atomic_writer(path) as handle:
        handle.write("\n".join(lines) + "\n")

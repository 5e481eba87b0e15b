"""JSON/JSONL files that survive crashes: atomic whole-file writes and resumable append logs.

Every stage passes its results to the next through these files, so a half-written file must
never look complete: whole files are written to a temporary name and renamed into place, and
append logs drop a torn last line when they are reopened.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenskip.core.errors import UsageError


def read_jsonl(path: str | os.PathLike, *, what: str = "file", made_by: str | None = None) -> list[dict]:
    """Read a JSONL file; a bad line is reported as `file:line` with the parser's complaint."""
    path = Path(path)
    if not path.is_file():
        hint = f" (it is written by {made_by})" if made_by else ""
        raise UsageError(f"{what} not found: {path}{hint}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    return parse_json(path.read_text(encoding="utf-8"), path)


def parse_json(text: str, path: str | os.PathLike) -> Any:
    """JSON text read from `path`; a syntax error is reported as `file:line` with the parser's complaint."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def dumps_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of `path`; on success it replaces `path`, on error it vanishes.

    The new file gets the mode the old one had (else the one the umask gives a new file, as `open`
    would): `mkstemp` creates 0600 files, which would lock colleagues on a shared machine out of
    results they could read before. The folder is fsynced after the rename so the rename itself
    survives a power cut.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; expected a file path there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot write {path}: a file stands where a folder of its path should be") from None
    except PermissionError:
        raise UsageError(f"cannot write {path}: permission denied") from None
    try:
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mode_for(path: Path) -> int:
    """The permission bits `path` has now, or those `open()` would give a new file under the umask."""
    with contextlib.suppress(FileNotFoundError):
        return stat.S_IMODE(path.stat().st_mode)
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux reports it without changing it; elsewhere reading the umask means setting it back at once
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> None:
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(dumps_line(record))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 4) -> None:
    with atomic_writer(path) as handle:
        json.dump(obj, handle, indent=indent, ensure_ascii=False)
        handle.write("\n")


class AppendLog:
    """A JSONL file that grows one flushed line per finished record, for resumable runs.

    Opening it repairs a torn last line (a run killed mid-write) and exposes the complete
    records already there, so a rerun skips them and writes no duplicate.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._recover()
        self._handle = self.path.open("a", encoding="utf-8")

    def _recover(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        records = []
        for raw in data[:keep].splitlines():
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    raise UsageError(
                        f"{self.path}: line {len(records) + 1} is corrupt; delete the file to start this run over"
                    ) from None
        if keep < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(keep)
        return records

    def append(self, record: dict) -> None:
        # flush (not fsync): a killed process loses nothing the OS already holds
        self._handle.write(dumps_line(record))
        self._handle.flush()
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

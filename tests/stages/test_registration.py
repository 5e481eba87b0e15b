"""Stage 3 in a shared LLaMA-Factory checkout: name clashes, backups, the registry's formatting,
symlinks, concurrent registrations, file modes, and the layout of the stage's inputs."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT
from stage_files import convert, lf_checkout, make_run

from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.stages import llamafactory

ENTRY = {"file_name": "train.json", "columns": llamafactory.DATASET_COLUMNS}
# another user's dataset, registered under the name our file would get
THEIRS = {"file_name": "theirs.json", "formatting": "sharegpt"}


def info_of(checkout: Path) -> dict:
    return json.loads((checkout / "data" / "dataset_info.json").read_text())


def backups(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f"{name}.") and p.name.endswith(".bak")
                  and p.name != f"{name}.bak")


@pytest.fixture
def fixed_clock(monkeypatch):
    """Every backup made in the same second: names must still never collide."""
    monkeypatch.setattr(llamafactory, "_timestamp", lambda: "20250101-120000")


# --- 1. name clashes are refused unless --overwrite; identical content is a no-op -------------------------------


def test_a_different_entry_under_the_same_name_is_refused(tmp_path):
    checkout = lf_checkout(tmp_path, json.dumps({"train": THEIRS}))
    before = (checkout / "data" / "dataset_info.json").read_text()
    with pytest.raises(UsageError, match=r"'train' is already registered .*--overwrite") as error:
        convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout))
    assert len(str(error.value).splitlines()) == 1
    assert (checkout / "data" / "dataset_info.json").read_text() == before


def test_a_different_data_file_at_the_target_is_refused(tmp_path):
    checkout = lf_checkout(tmp_path)
    (checkout / "data" / "train.json").write_text("[\"someone else's data\"]")
    with pytest.raises(UsageError, match=r"train.json already exists with different content.*--overwrite") as error:
        convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout))
    assert len(str(error.value).splitlines()) == 1
    assert (checkout / "data" / "train.json").read_text() == "[\"someone else's data\"]"
    assert info_of(checkout) == {}


def test_overwrite_replaces_and_keeps_backups_that_are_never_overwritten(tmp_path, fixed_clock, capsys):
    checkout = lf_checkout(tmp_path, json.dumps({"first": {"file_name": "f.json"}, "train": THEIRS, "last": {}}))
    data = checkout / "data"
    (data / "train.json").write_text("[\"theirs, version 1\"]")
    run = make_run(tmp_path / "run")
    convert(run, "--llamafactory-dir", str(checkout), "--overwrite")
    out = capsys.readouterr().out
    assert list(info_of(checkout)) == ["first", "train", "last"]  # replaced in place
    assert info_of(checkout)["train"] == ENTRY
    assert (data / "train.json").read_bytes() == (run / "train.json").read_bytes()
    [data_backup] = backups(data, "train.json")
    [info_backup] = backups(data, "dataset_info.json")
    assert data_backup.name == "train.json.20250101-120000.bak"
    assert data_backup.read_text() == "[\"theirs, version 1\"]"
    assert json.loads(info_backup.read_text())["train"] == THEIRS
    assert str(data_backup) in out and str(info_backup) in out  # the output says where they went

    # a second replacement in the same second gets new backups; the first ones stay as they were
    (data / "train.json").write_text("[\"theirs, version 2\"]")
    (data / "dataset_info.json").write_text(json.dumps({"train": THEIRS}))
    convert(run, "--llamafactory-dir", str(checkout), "--overwrite")
    assert [p.name for p in backups(data, "train.json")] == ["train.json.20250101-120000-1.bak",
                                                             "train.json.20250101-120000.bak"]
    assert data_backup.read_text() == "[\"theirs, version 1\"]"
    assert (data / "train.json.20250101-120000-1.bak").read_text() == "[\"theirs, version 2\"]"
    assert len(backups(data, "dataset_info.json")) == 2


def test_identical_file_and_entry_are_a_no_op(tmp_path):
    checkout = lf_checkout(tmp_path)
    run = make_run(tmp_path / "run")
    convert(run, "--llamafactory-dir", str(checkout))
    data = checkout / "data"
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.name != ".lock"}
    convert(run, "--llamafactory-dir", str(checkout))  # same records (same seed): nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir() if p.name != ".lock"} == stamps
    assert not backups(data, "train.json") and not backups(data, "dataset_info.json")


@pytest.mark.parametrize("script, prepare, message", [
    ("copy_to_llamafactory.py", lambda data: (data / "mine.json").write_text("[1]"), "mine.json already exists"),
    ("register_dataset.py", lambda data: (data / "dataset_info.json").write_text(json.dumps({"mine": THEIRS})),
     "'mine' is already registered"),
])
def test_scripts_refuse_a_clash_in_one_line_and_accept_overwrite(tmp_path, script, prepare, message):
    checkout = lf_checkout(tmp_path)
    (checkout / "data" / "mine.json").write_text("[]")
    source = tmp_path / "mine.json"
    source.write_text("[2]")
    prepare(checkout / "data")
    args = {"copy_to_llamafactory.py": ["--source-file", str(source)],
            "register_dataset.py": ["--dataset-file", "mine.json"]}[script]

    def run(*extra):
        return subprocess.run([sys.executable, str(ROOT / script), "--llamafactory-dir", str(checkout), *args, *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    refused = run()
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert message in refused.stderr and "--overwrite" in refused.stderr
    accepted = run("--overwrite")
    assert accepted.returncode == 0, accepted.stderr
    assert "backup" in accepted.stdout and ".bak" in accepted.stdout


# --- 2. a refused registration copies nothing ----------------------------------------------------------------------


def test_a_refused_registration_leaves_no_data_file(tmp_path):
    checkout = lf_checkout(tmp_path, json.dumps({"train": THEIRS}))
    with pytest.raises(UsageError, match="--overwrite"):
        convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout))
    assert sorted(p.name for p in (checkout / "data").iterdir() if p.name != ".lock") == ["dataset_info.json"]
    assert not (tmp_path / "run" / "train.json").exists()  # the checks run before the output file is written


def test_an_output_file_inside_data_is_checked_before_it_is_written(tmp_path, fixed_clock):
    checkout = lf_checkout(tmp_path)
    inside = checkout / "data" / "train.json"
    inside.write_text("[\"someone else's data\"]")
    run = make_run(tmp_path / "run")
    args = ["--input-dir", str(run), "--ratios", "0.9", "0.5", "--output-file", str(inside),
            "--llamafactory-dir", str(checkout)]
    with pytest.raises(UsageError, match="already exists with different content"):
        llamafactory.main(args)
    assert inside.read_text() == "[\"someone else's data\"]"
    llamafactory.main([*args, "--overwrite"])
    assert len(json.loads(inside.read_text())) == 2 and info_of(checkout)["train"] == ENTRY
    assert (checkout / "data" / "train.json.20250101-120000.bak").read_text() == "[\"someone else's data\"]"


# --- 3. the registry keeps its formatting, and a symlinked registry stays a link ------------------------------------


LLAMAFACTORY_INFO = {
    "identity": {"file_name": "identity.json"},
    "alpaca_zh_demo": {"file_name": "alpaca_zh_demo.json", "description": "中文示例"},
    "glaive_toolcall_en_demo": {"file_name": "glaive_toolcall_en_demo.json", "formatting": "sharegpt",
                                "columns": {"messages": "conversations", "tools": "tools"}},
}


@pytest.mark.parametrize("indent, ensure_ascii, newline", [(2, False, True), (4, False, False), ("\t", True, True)])
def test_the_registry_keeps_its_style_so_a_diff_shows_only_the_new_entry(tmp_path, indent, ensure_ascii, newline):
    text = json.dumps(LLAMAFACTORY_INFO, indent=indent, ensure_ascii=ensure_ascii) + ("\n" if newline else "")
    checkout = lf_checkout(tmp_path, text)
    llamafactory.copy_to_llamafactory(make_run(tmp_path / "run") / "Original" / "train" / "samples" /
                                      "predictions_formatted.jsonl", checkout, "train.json")
    assert llamafactory.register_dataset(checkout, "train.json") == ("train", True)
    after = (checkout / "data" / "dataset_info.json").read_text()
    assert after == json.dumps({**LLAMAFACTORY_INFO, "train": ENTRY}, indent=indent,
                               ensure_ascii=ensure_ascii) + ("\n" if newline else "")
    # as `git diff` would show it: the last entry's closing brace gains a comma, the rest is added lines
    old_lines, new_lines = text.splitlines(), after.splitlines()
    assert new_lines[:len(old_lines) - 2] == old_lines[:-2]
    assert new_lines[len(old_lines) - 2] == old_lines[-2] + ","
    assert new_lines[-1] == old_lines[-1]


def test_a_new_registry_is_written_in_llamafactorys_style(tmp_path):
    checkout = lf_checkout(tmp_path, None)
    (checkout / "data" / "train.json").write_text("[]")
    llamafactory.register_dataset(checkout, "train.json")
    assert (checkout / "data" / "dataset_info.json").read_text() == json.dumps({"train": ENTRY}, indent=2) + "\n"


def test_a_symlinked_registry_stays_a_symlink(tmp_path):
    shared = tmp_path / "shared" / "dataset_info.json"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"identity": {"file_name": "identity.json"}}, indent=2) + "\n")
    checkout = lf_checkout(tmp_path, None)
    link = checkout / "data" / "dataset_info.json"
    link.symlink_to(shared)
    convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout))
    assert link.is_symlink() and link.resolve() == shared.resolve()
    assert list(json.loads(shared.read_text())) == ["identity", "train"]


# --- 4. two registrations at once both land ----------------------------------------------------------------------


def test_concurrent_registrations_do_not_lose_an_entry(tmp_path, monkeypatch):
    checkout = lf_checkout(tmp_path)
    for name in ("a", "b", "c"):
        (checkout / "data" / f"{name}.json").write_text("[]")
    # widen the read-modify-write window: without a lock every thread reads the empty registry
    read_text = pathlib.Path.read_text

    def slow_read_text(self, *args, **kwargs):
        text = read_text(self, *args, **kwargs)
        if self.name == "dataset_info.json":
            time.sleep(0.3)
        return text

    monkeypatch.setattr(pathlib.Path, "read_text", slow_read_text)
    errors = []

    def register(name):
        try:
            llamafactory.register_dataset(checkout, f"{name}.json")
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    monkeypatch.undo()
    assert not errors
    assert sorted(info_of(checkout)) == ["a", "b", "c"]


def test_a_registration_waits_for_the_lock_then_says_who_holds_it(tmp_path, monkeypatch):
    checkout = lf_checkout(tmp_path)
    (checkout / "data" / "train.json").write_text("[]")
    monkeypatch.setattr(llamafactory, "LOCK_WAIT_S", 0.3)
    with FolderLock(checkout / "data"):
        with pytest.raises(UsageError, match="in use"):
            llamafactory.register_dataset(checkout, "train.json")
    assert info_of(checkout) == {}


# --- 5. file modes ----------------------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_follow_the_umask_and_the_existing_files(tmp_path, umask_022, fixed_clock):
    checkout = lf_checkout(tmp_path, json.dumps({"train": THEIRS}, indent=2))
    data = checkout / "data"
    os.chmod(data / "dataset_info.json", 0o664)  # a group-writable registry in a shared checkout
    convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout), "--overwrite")
    assert mode(data / "train.json") == 0o644  # new: what the umask gives, not mkstemp's 0600
    assert mode(data / "dataset_info.json") == 0o664  # rewritten: keeps its mode
    [info_backup] = backups(data, "dataset_info.json")
    assert mode(info_backup) == 0o664

    os.chmod(data / "train.json", 0o660)
    (data / "train.json").write_text("[]")
    convert(make_run(tmp_path / "run"), "--llamafactory-dir", str(checkout), "--overwrite")
    assert mode(data / "train.json") == 0o660
    [data_backup] = backups(data, "train.json")
    assert mode(data_backup) == 0o660


# --- 6. inputs are found where tokenskip.core.layout puts them -------------------------------------------------------


def test_inputs_are_found_through_the_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "FORMATTED", "formatted_cots.jsonl")
    monkeypatch.setitem(layout.COMPRESSION_FOLDERS, "llmlingua2", "LLMLingua2_Compression")
    run = make_run(tmp_path, method_folder="LLMLingua2_Compression")
    samples = run / "Original" / "train" / "samples"
    (samples / "predictions_formatted.jsonl").rename(samples / "formatted_cots.jsonl")
    assert len(convert(run, "--mix", "all")) == 6

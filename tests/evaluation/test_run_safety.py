"""evaluation.py runs that must not lose or mix up results: one writer per run folder, regrading
that never replaces another run's metrics, datasets edited in place, file permissions, and the
one-line errors for the remaining bad inputs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from stage_files import SAMPLE_TEST, cli_args, read_lines, run_script

from tokenskip.core import jsonio
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.evaluation import run as evaluation_run
from tokenskip.stages import evaluate

SAMPLES = Path("tiny") / "Original" / "test" / "samples"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- one writer per run folder


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tiny_lm_dir, tmp_path):
    with FolderLock(tmp_path / SAMPLES):
        with pytest.raises(UsageError, match=r"in use by another run \(pid %d on .*: " % os.getpid()):
            evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    assert not (tmp_path / SAMPLES / "run.json").exists()  # the refused run wrote nothing
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))  # released: it runs


def test_two_concurrent_runs_one_works_one_gets_a_one_line_error(tiny_lm_dir, tmp_path):
    args = cli_args(tiny_lm_dir, tmp_path, "--max_new_tokens", "48", "--eval_batch_size", "1")
    first = subprocess.Popen([sys.executable, "evaluation.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock = tmp_path / SAMPLES / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    # the first is paused while the second tries: a fast first run could otherwise finish before the second
    # has even imported torch, and the test would race instead of checking the lock
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = run_script(*args)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    message = one_line_error(second)
    assert f"pid {first.pid}" in message and "evaluation.py" in message
    records = read_lines(tmp_path / SAMPLES / "predictions.jsonl")
    questions = len(SAMPLE_TEST.read_text().splitlines())
    assert len({r["id"] for r in records}) == len(records) == questions  # no work done twice
    timed = [i for entry in read_lines(tmp_path / SAMPLES / "generation_log.jsonl") for i in entry["ids"]]
    assert sorted(timed) == sorted(r["id"] for r in records)  # and no time counted twice


def test_the_lock_goes_with_a_killed_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tokenskip.core.locking import FolderLock; "
                               f"FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
        FolderLock(tmp_path).acquire()
    holder.kill()  # SIGKILL: no clean-up code runs
    holder.wait()
    FolderLock(tmp_path).acquire().release()



def test_a_forked_child_that_outlives_a_killed_holder_does_not_keep_the_lock(tmp_path):
    # vLLM forks its engine process; after kill -9 of evaluation.py that child lives on a while
    script = "\n".join([
        "import multiprocessing, time",
        "from tokenskip.core.locking import FolderLock",
        f"FolderLock({str(tmp_path)!r}).acquire()",
        "fork = multiprocessing.get_context('fork')",
        "running = fork.Event()",
        "def child_body():",
        "    running.set()",  # the after-fork hooks have run by now
        "    time.sleep(60)",
        "child = fork.Process(target=child_body)",
        "child.start()",
        "assert running.wait(60)",
        "print(child.pid, flush=True)",
        "time.sleep(60)"])
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the forked child is still alive ...
        FolderLock(tmp_path).acquire().release()  # ... and the folder is free
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)

# ---------------------------------------------------------------- regrade writes next to what it regrades


def test_regrading_another_file_leaves_the_run_and_its_metrics_alone(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "4"))
    samples = tmp_path / SAMPLES
    metrics_before = (samples / "metrics.json").read_bytes()
    predictions_before = (samples / "predictions.jsonl").read_bytes()
    subset = samples / "predictions_correct.jsonl"  # what stage 2 writes there: fewer records
    records = read_lines(samples / "predictions.jsonl")[:2]
    records[0]["model_output"] = f"The final answer is: $\\boxed{{{records[0]['answer']}}}$"
    subset.write_text("".join(json.dumps(r) + "\n" for r in records))

    result = run_script("--regrade", subset)
    assert result.returncode == 0, result.stderr
    assert (samples / "metrics.json").read_bytes() == metrics_before
    assert (samples / "predictions.jsonl").read_bytes() == predictions_before
    regraded = read_lines(samples / "predictions_correct.regraded.jsonl")
    metrics = json.loads((samples / "predictions_correct.regraded.metrics.json").read_text())
    assert regraded[0]["accuracy"] is True and metrics["n_samples"] == 2
    assert metrics["regraded_from"] == str(subset)
    # the message names the files it wrote
    assert "predictions_correct.regraded.jsonl" in result.stdout
    assert "predictions_correct.regraded.metrics.json" in result.stdout


def test_grader_errors_are_kept_on_the_record(tiny_lm_dir, tmp_path, monkeypatch):
    from tokenskip.grading import graders as grading

    crash = grading.AnswerGrader(verdict=lambda *a: (_ for _ in ()).throw(RecursionError("too deep")))
    monkeypatch.setitem(grading.GRADERS, "tokenskip", crash)

    class InProcess:  # the crash must be recorded by the same code that records worker crashes
        def __init__(self, *a, **k):
            self.primary = "tokenskip"

        def grade(self, requests):
            return [grading.Grade(prediction="", correct=False, verdicts={"tokenskip": False},
                                  errors={"tokenskip": "RecursionError: too deep"}) for _ in requests]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(evaluation_run, "Grader", InProcess)
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    records = read_lines(tmp_path / SAMPLES / "predictions.jsonl")
    assert len(records) == 2
    assert all(r["grade_errors"] == {"tokenskip": "RecursionError: too deep"} and not r["accuracy"] for r in records)


# ---------------------------------------------------------------- the data a run was made from


def copy_of_sample(path: Path, n: int = 6) -> Path:
    path.write_text("".join(SAMPLE_TEST.read_text().splitlines(keepends=True)[:n]))
    return path


def data_args(model, out, data_path):
    args = cli_args(model, out)
    args[args.index("--data-path") + 1] = str(data_path)
    return args


def test_a_dataset_edited_in_place_is_noticed(tiny_lm_dir, tmp_path):
    dataset = copy_of_sample(tmp_path / "data.jsonl")
    evaluate.main(data_args(tiny_lm_dir, tmp_path / "out", dataset))
    run = json.loads((tmp_path / "out" / SAMPLES / "run.json").read_text())
    assert len(run["data_sha256"]) == 64 and run["data_source"] == str(dataset.resolve())
    lines = dataset.read_text().splitlines(keepends=True)
    record = json.loads(lines[0])
    record["answer"] = record["answer"].rsplit("####", 1)[0] + "#### 999999"
    dataset.write_text(json.dumps(record) + "\n" + "".join(lines[1:]))
    with pytest.raises(UsageError, match="changed since"):
        evaluate.main(data_args(tiny_lm_dir, tmp_path / "out", dataset))


def test_one_file_named_relatively_or_absolutely_is_one_dataset(tiny_lm_dir, tmp_path, monkeypatch):
    dataset = copy_of_sample(tmp_path / "data.jsonl")
    [first] = evaluate.main(data_args(tiny_lm_dir, tmp_path / "out", dataset))
    monkeypatch.chdir(tmp_path)
    [again] = evaluate.main(data_args(tiny_lm_dir, tmp_path / "out", Path("data.jsonl")))
    assert again == first


def test_a_run_made_before_data_hashes_still_resumes_and_gets_one(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    run_file = tmp_path / SAMPLES / "run.json"
    old = json.loads(run_file.read_text())
    sha = old.pop("data_sha256")
    old.pop("overlong")
    old["data_source"] = os.path.relpath(old["data_source"])  # older runs recorded the path as given
    run_file.write_text(json.dumps(old))
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    assert json.loads(run_file.read_text())["data_sha256"] == sha


# ---------------------------------------------------------------- the adapter a run was made with


def test_the_adapter_is_named_hashed_and_recorded(tiny_lm_dir, tiny_adapter, tmp_path, capsys):
    from tokenskip.core import layout
    from tokenskip.models.loading import adapter_sha256

    args = [*cli_args(tiny_lm_dir, tmp_path / "out", "--max_num_examples", "2"), "--use_adapter",
            "--adapter-path", str(tiny_adapter), "--compression_ratio", "0.5"]
    evaluate.main(args)
    sha = adapter_sha256(str(tiny_adapter))
    assert f"adapter: {tiny_adapter} (sha256 {sha[:12]})" in capsys.readouterr().out
    samples = layout.samples_dir(layout.run_dir(layout.model_dir(tmp_path / "out", "tiny"), method="tokenskip",
                                                ratio=0.5, data_type="test"))
    assert json.loads((samples / "run.json").read_text())["adapter_sha256"] == sha
    assert json.loads((samples / "metrics.json").read_text())["adapter_sha256"] == sha


def test_an_adapter_retrained_in_place_is_not_mixed_into_its_old_run(tiny_lm_dir, tiny_adapter, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    args = [*cli_args(tiny_lm_dir, tmp_path / "out", "--max_num_examples", "2"), "--use_adapter",
            "--adapter-path", str(adapter), "--compression_ratio", "0.5"]
    evaluate.main(args)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # other weights, same folder
    with pytest.raises(UsageError, match="the adapter .* changed since"):
        evaluate.main(args)


# ---------------------------------------------------------------- permissions


def test_outputs_are_readable_by_others_under_umask_022(tiny_lm_dir, tmp_path):
    old = os.umask(0o022)
    try:
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    finally:
        os.umask(old)
    for name in ("predictions.jsonl", "metrics.json", "run.json", "generation_log.jsonl"):
        assert stat.S_IMODE((tmp_path / SAMPLES / name).stat().st_mode) == 0o644, name


def test_a_rewritten_file_keeps_its_mode(tmp_path):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o664)
    jsonio.write_json_atomic(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o664 and json.loads(path.read_text()) == {"a": 1}
    old = os.umask(0o027)
    try:
        jsonio.write_json_atomic(tmp_path / "new.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640


# ---------------------------------------------------------------- one-line errors


def test_max_num_examples_zero_is_refused(tiny_lm_dir, tmp_path):
    message = one_line_error(run_script(*cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "0")))
    assert "--max_num_examples must be positive" in message
    assert not (tmp_path / "tiny").exists()


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tiny_lm_dir, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    message = one_line_error(run_script(*cli_args(tiny_lm_dir, tmp_path / "out", "--max_num_examples", "1")))
    assert "out" in message and (tmp_path / "out").read_text() == "not a folder"


@pytest.fixture(scope="module")
def short_context_model(tiny_lm_dir, tmp_path_factory) -> Path:
    """The tiny model with a 70-token context: with 8 new tokens, the 63-token prompts among the first
    four sample questions (60 and 63 tokens) overflow it."""
    import shutil

    folder = tmp_path_factory.mktemp("short-context")
    shutil.copytree(tiny_lm_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 70}))
    return folder


def test_overlong_prompts_are_counted_and_skipped_or_cut_on_request(short_context_model, tmp_path, capsys):
    # TokenSkip's fixed qwen prompt, whose lengths this test's 70-token context was sized for
    qwen = ("--max_num_examples", "4", "--model-type", "qwen")
    [warned] = evaluate.main(cli_args(short_context_model, tmp_path / "warn", *qwen))
    out = capsys.readouterr().out
    assert "warning: 2 of 4 prompts leave no room for 8 new tokens in the model's 70-token context" in out
    assert warned["n_samples"] == 4 and warned["n_skipped_overlong"] == 0

    [skipped] = evaluate.main(cli_args(short_context_model, tmp_path / "skip", *qwen, "--overlong", "skip"))
    assert skipped["n_samples"] == 2 and skipped["n_skipped_overlong"] == 2
    [cut] = evaluate.main(cli_args(short_context_model, tmp_path / "cut", *qwen, "--overlong", "truncate"))
    from tokenskip.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(short_context_model))
    records = read_lines(tmp_path / "cut" / SAMPLES / "predictions.jsonl")
    assert cut["n_samples"] == 4
    assert all(len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) <= 62 for r in records)


def test_skipping_every_prompt_is_an_error_not_an_empty_run(short_context_model, tmp_path):
    with pytest.raises(UsageError, match="every prompt"):
        evaluate.main(cli_args(short_context_model, tmp_path, "--max_num_examples", "4", "--overlong", "skip",
                               "--max_new_tokens", "20"))


# ---------------------------------------------------------------- per-request latency and capped outputs


def test_latency_probe_times_exactly_n_questions_alone(tiny_lm_dir, tmp_path, monkeypatch):
    calls = []
    create = evaluation_run.create_backend

    def recording(*args):
        backend = create(*args)
        generate = backend.generate
        backend.generate = lambda prompts, budget=None, ids=None: (calls.append(len(prompts))
                                                                   or generate(prompts, budget, ids))
        return backend

    monkeypatch.setattr(evaluation_run, "create_backend", recording)
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "6", "--latency-probe", "3"))
    records = read_lines(tmp_path / SAMPLES / "predictions.jsonl")
    probes = [t for t in read_lines(tmp_path / SAMPLES / "generation_log.jsonl") if t.get("probe")]
    assert [t["ids"] for t in probes] == [[r["id"]] for r in records[:3]]  # the first three, in dataset order
    assert all(t["latency_s"][0] > 0 for t in probes)
    assert calls[-4:] == [1, 1, 1, 1]  # one warm-up, then each probed question alone
    times = sorted(t["latency_s"][0] for t in probes)
    latency = metrics["request_latency"]
    assert latency["n"] == 3 and latency["mean"] == pytest.approx(sum(times) / 3)  # probes only, not mixed
    assert latency["p50"] == times[1] and latency["basis"] == "alone (--latency-probe)"
    assert metrics["latency_probe"] == 3
    assert not any("latency" in key for r in records for key in r)  # predictions hold no clock reading

    # rerun of the finished, probed run: nothing is generated or probed again
    monkeypatch.setattr(evaluation_run, "create_backend", lambda *a: pytest.fail("a probed run loaded a model"))
    [again] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "6", "--latency-probe", "3"))
    assert again["request_latency"] == latency


@pytest.mark.parametrize("batching, basis", [("static", "within its batch"),
                                             ("auto", "queued to last token (continuous batching)")])
def test_outputs_that_hit_the_token_cap_are_counted(tiny_lm_dir, tmp_path, batching, basis):
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "4", "--batching", batching))
    records = read_lines(tmp_path / SAMPLES / "predictions.jsonl")
    # a random model rarely emits a stop token within 8 tokens: those outputs are capped
    assert all(r["capped"] == (r["output_tokens"] == 8) for r in records)
    assert metrics["n_capped"] == sum(r["capped"] for r in records)
    middle = sorted(r["cot_length"] for r in records)[1:3]
    assert metrics["median_cot_length"] == sum(middle) / 2
    # without a probe, each request's latency is its own finish time from the call's start (one call of 4 here,
    # all decoding at once): an answer that stopped sooner came back sooner, and the capped ones at the last step
    [entry] = read_lines(tmp_path / SAMPLES / "generation_log.jsonl")
    latency = dict(zip(entry["ids"], entry["latency_s"]))
    assert metrics["request_latency"]["n"] == 4 and metrics["request_latency"]["basis"] == basis
    assert metrics["decoding"]["batching"] == ("static" if batching == "static" else "continuous")
    by_length = sorted(records, key=lambda r: (r["output_tokens"], r["capped"]))
    assert [latency[r["id"]] for r in by_length] == sorted(latency.values())
    assert len({latency[r["id"]] for r in records if r["capped"]}) <= 1


# ---------------------------------------------------------------- k samples per question


def test_k_samples_per_question_are_items_of_their_own_and_resume(tiny_lm_dir, tmp_path):
    args = cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3", "--n_samples", "3", "--temperature", "1.0")
    [metrics] = evaluate.main(args)
    predictions = tmp_path / SAMPLES / "predictions.jsonl"
    records = read_lines(predictions)
    assert len(records) == 9 and metrics["n_samples"] == 9 and metrics["n_questions"] == 3
    assert [r["sample"] for r in records] == [0, 1, 2] * 3
    assert all(r["id"] == f"{r['question_id']}/{r['sample']}" for r in records)
    assert len({r["model_output"] for r in records}) > 3  # sampled: the copies of a question differ
    assert metrics["pass@1"] == metrics["accuracy"] and len(metrics["pass@1_per_sample"]) == 3
    # killed after 5 of 9: the rerun makes the same 9
    predictions.write_text("".join(line + "\n" for line in predictions.read_text().splitlines()[:5]))
    (tmp_path / SAMPLES / "metrics.json").unlink()
    evaluate.main(args)
    assert read_lines(predictions) == records


def test_k_samples_need_sampling(tiny_lm_dir, tmp_path):
    with pytest.raises(UsageError, match="--n_samples 3 with greedy decoding"):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--n_samples", "3"))


# ---------------------------------------------------------------- a failed run leaves the tree as it found it


def test_a_refused_run_leaves_no_empty_folders_and_no_lock(tiny_lm_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="needs the base model's run first"):
        evaluate.main([*cli_args(tiny_lm_dir, out), "--baseline", "truncation", "--compression_ratio", "0.5"])
    assert not out.exists()  # it made out/tiny/Truncation/0.5/samples/ for its lock, and removed them
    (out / "mine").mkdir(parents=True)  # a folder that was there before stays, with what it holds
    with pytest.raises(UsageError, match="needs the base model's run first"):
        evaluate.main([*cli_args(tiny_lm_dir, out), "--baseline", "truncation", "--compression_ratio", "0.5"])
    assert sorted(p.name for p in out.rglob("*")) == ["mine"]


def test_a_finished_run_leaves_no_lock_file(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    assert sorted(p.name for p in (tmp_path / SAMPLES).iterdir()) == [
        "generation_log.jsonl", "metrics.json", "predictions.jsonl", "run.json"]


def test_a_lock_removed_between_open_and_flock_is_taken_again(tmp_path, monkeypatch):
    """Release removes the lock file: a second process that opened the old file just before must not
    think it holds the folder while a third locks the new file."""
    from tokenskip.core import locking

    first = FolderLock(tmp_path).acquire()
    opened = []
    real_open = os.open

    def racing_open(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if not opened:  # the holder releases (removing the file) right after our first open
            opened.append(fd)
            first.release()
        return fd

    monkeypatch.setattr(locking.os, "open", racing_open)
    second = FolderLock(tmp_path).acquire()
    monkeypatch.setattr(locking.os, "open", real_open)
    lock = tmp_path / ".lock"
    assert lock.exists() and os.stat(lock).st_ino == os.fstat(second._fd).st_ino  # the file at the path
    with pytest.raises(UsageError, match="in use by another run"):
        FolderLock(tmp_path).acquire()
    second.release()
    assert not lock.exists()

"""Sharded evaluation (--num-shards / --shard-index / --merge-shards) and --data-parallel-size: the
merged run folder is exactly the unsharded one (greedy decoding, hf backend)."""

from __future__ import annotations

import json
import os

import pytest
from stage_files import cli_args, read_lines

from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.evaluation import run as evaluation_run
from tokenskip.stages import evaluate

SAMPLES = "tiny/Original/test/samples"
# what a run's timings decide: they differ from run to run, and between a process and its shards
TIMING_KEYS = {"avg_latency", "total_seconds", "tokens_per_second", "sample_latency", "request_latency",
               "latency_probe_results", "merged_shards", "shard"}


def common(*extra):
    # 40 questions, 3 sequence slots: continuous batching takes 12 prompts a call, so 4 calls, the last one
    # short, and shards get unequal shares
    return ["--max_new_tokens", "12", "--eval_batch_size", "3", *extra]


def untimed(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMING_KEYS}


def run_shards(model, out, count, *extra):
    for index in range(count):
        evaluate.main(cli_args(model, out, *common(*extra), "--num-shards", str(count), "--shard-index", str(index)))
    return evaluate.main(cli_args(model, out, *common(*extra), "--num-shards", str(count), "--merge-shards"))


def assert_same_run(merged_dir, single_dir):
    merged, single = merged_dir / SAMPLES, single_dir / SAMPLES
    assert (merged / "predictions.jsonl").read_bytes() == (single / "predictions.jsonl").read_bytes()
    merged_metrics = json.loads((merged / "metrics.json").read_text())
    assert untimed(merged_metrics) == untimed(json.loads((single / "metrics.json").read_text()))
    assert json.loads((merged / "run.json").read_text()) == json.loads((single / "run.json").read_text())
    return merged_metrics


@pytest.fixture(scope="module")
def single(tiny_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    evaluate.main(cli_args(tiny_lm_dir, out, *common()))
    return out


@pytest.mark.parametrize("count", [2, 3])
def test_shards_merge_to_exactly_the_unsharded_run(tiny_lm_dir, single, tmp_path, count):
    [metrics] = run_shards(tiny_lm_dir, tmp_path, count)
    merged = assert_same_run(tmp_path, single)
    assert metrics["merged_shards"] == merged["merged_shards"] == count
    assert merged["n_samples"] == 40
    # each shard wrote only its own folder, and holds its share of the 4 calls' prompts, in question order
    shares = [read_lines(tmp_path / SAMPLES / f"shards/{i}-of-{count}/predictions.jsonl") for i in range(count)]
    assert sorted(len(share) for share in shares) != [40 // count] * count or count == 2
    assert sum(len(share) for share in shares) == 40
    assert {r["id"] for share in shares for r in share} == {r["id"] for r in read_lines(single / SAMPLES /
                                                                                          "predictions.jsonl")}
    # the merged generation log holds every shard's calls: 4 in all, as in the unsharded run
    assert len(read_lines(tmp_path / SAMPLES / "generation_log.jsonl")) == 4


def test_a_killed_shard_reruns_alone_and_resumes(tiny_lm_dir, single, tmp_path, monkeypatch):
    args = cli_args(tiny_lm_dir, tmp_path, *common(), "--num-shards", "2")
    evaluate.main([*args, "--shard-index", "0"])
    evaluate.main([*args, "--shard-index", "1"])
    shard = tmp_path / SAMPLES / "shards/1-of-2"
    # as a kill after its first call leaves it: those answers and timings on disk, no metrics.json
    log = (shard / "generation_log.jsonl").read_text().splitlines(keepends=True)
    kept = {i for line in log[:1] for i in json.loads(line)["ids"]}
    lines = (shard / "predictions.jsonl").read_text().splitlines(keepends=True)
    (shard / "predictions.jsonl").write_text("".join(line for line in lines if json.loads(line)["id"] in kept))
    (shard / "generation_log.jsonl").write_text("".join(log[:1]))
    (shard / "metrics.json").unlink()
    with pytest.raises(UsageError, match=r"shard 1 of 2 is unfinished .*--shard-index 1 \(it resumes\)"):
        evaluate.main([*args, "--merge-shards"])
    generated = []
    create = evaluation_run.create_backend

    def counting(*a, **k):
        backend = create(*a, **k)
        generate = backend.generate
        backend.generate = lambda prompts, *more, **kw: generated.extend(prompts) or generate(prompts, *more, **kw)
        return backend

    monkeypatch.setattr(evaluation_run, "create_backend", counting)
    evaluate.main([*args, "--shard-index", "1"])
    assert len(kept) == 12 and len(generated) == len(lines) - 12  # only the missing answers' call ran again
    evaluate.main([*args, "--merge-shards"])
    assert_same_run(tmp_path, single)


def test_a_missing_or_running_shard_stops_the_merge_in_one_line(tiny_lm_dir, tmp_path):
    args = cli_args(tiny_lm_dir, tmp_path, *common("--max_num_examples", "6"), "--num-shards", "2")
    evaluate.main([*args, "--shard-index", "0"])
    with pytest.raises(UsageError, match=r"shard 1 of 2 is missing .*--shard-index 1"):
        evaluate.main([*args, "--merge-shards"])
    assert not (tmp_path / SAMPLES / "predictions.jsonl").exists()  # nothing half-merged
    evaluate.main([*args, "--shard-index", "1"])
    with FolderLock(tmp_path / SAMPLES / "shards/1-of-2"), pytest.raises(UsageError, match="in use"):
        evaluate.main([*args, "--merge-shards"])  # a shard still writing (or a second merge)
    assert not (tmp_path / SAMPLES / "predictions.jsonl").exists()
    evaluate.main([*args, "--merge-shards"])
    assert len(read_lines(tmp_path / SAMPLES / "predictions.jsonl")) == 6


def test_a_merge_under_other_settings_than_its_shards_is_refused(tiny_lm_dir, tmp_path):
    args = cli_args(tiny_lm_dir, tmp_path, *common("--max_num_examples", "6"), "--num-shards", "2")
    for index in ("0", "1"):
        evaluate.main([*args, "--shard-index", index])
    with pytest.raises(UsageError, match="max_new_tokens: 12 -> 20"):
        evaluate.main([*args, "--merge-shards", "--max_new_tokens", "20"])
    with pytest.raises(UsageError, match="split the job otherwise"):
        evaluate.main([*args, "--merge-shards", "--eval_batch_size", "2"])


@pytest.mark.parametrize("extra, message", [
    (["--num-shards", "2"], "run each shard with --shard-index 0..1"),
    (["--num-shards", "2", "--shard-index", "2"], "--shard-index must be in 0..1"),
    (["--num-shards", "0"], "--num-shards must be 1 or more"),
    (["--merge-shards"], "needs the --num-shards K"),
    (["--num-shards", "2", "--shard-index", "0", "--merge-shards"], "drop --shard-index"),
    (["--data-parallel-size", "2", "--num-shards", "2", "--shard-index", "0"], "runs its own shards"),
    (["--data-parallel-size", "0"], "--data-parallel-size must be 1 or more"),
])
def test_shard_flags_are_checked(tiny_lm_dir, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, *common(), *extra))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two ranks need two cores")
def test_data_parallel_ranks_with_the_adapter_merge_to_the_single_process_run(tiny_lm_dir, tiny_adapter, tmp_path):
    """Two ranks (processes on a core each), the LoRA adapter in both: the adapter's answers of one process."""
    adapter = ["--adapter-path", str(tiny_adapter), "--use_adapter", "--compression_ratio", "0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate.main(cli_args(tiny_lm_dir, one, *common(*adapter)))
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, two, *common(*adapter), "--data-parallel-size", "2"))
    samples = "tiny/TokenSkip/0.5/samples"
    assert (two / samples / "predictions.jsonl").read_bytes() == (one / samples / "predictions.jsonl").read_bytes()
    assert metrics["merged_shards"] == 2 and metrics["use_adapter"]
    shard_1 = read_lines(two / samples / "shards/1-of-2/predictions.jsonl")
    assert shard_1 and all("<" not in r["id"] for r in shard_1)  # rank 1 answered its share, with the adapter:
    base = evaluate.main(cli_args(tiny_lm_dir, tmp_path / "base", *common()))[0]
    outputs = {r["id"]: r["model_output"] for r in read_lines(tmp_path / "base" / SAMPLES / "predictions.jsonl")}
    assert any(outputs[r["id"]] != r["model_output"] for r in shard_1)  # ...its answers are not the base model's
    assert base["use_adapter"] is False
    assert (two / "tiny/logs/rank-1.log").is_file()


def test_more_shards_than_batches_leaves_empty_shards_that_merge(tiny_lm_dir, tmp_path):
    """6 questions in batches of 3 are 2 batches: shards 2 and 3 of 4 have nothing to do."""
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    evaluate.main(cli_args(tiny_lm_dir, single, *common("--max_num_examples", "6")))
    args = cli_args(tiny_lm_dir, sharded, *common("--max_num_examples", "6"), "--num-shards", "4")
    for index in range(4):
        evaluate.main([*args, "--shard-index", str(index)])
    for empty in ("2-of-4", "3-of-4"):
        assert (sharded / SAMPLES / "shards" / empty / "predictions.jsonl").read_text() == ""
    evaluate.main([*args, "--merge-shards"])
    assert_same_run(sharded, single)


def test_engines_that_schedule_each_request_alone_shard_by_question(tiny_lm_dir, tmp_path):
    """vLLM's chunk of 512 prompts would make a 40-question job one shard: shards split by question."""
    from tokenskip.core.shards import Shard
    from tokenskip.data import benchmarks as data
    from tokenskip.evaluation.run import Job

    examples = [data.Example(id=f"q{i}", question=f"Q{i}", answer="1", reference="") for i in range(10)]
    batch = list(reversed(examples))  # longest first
    job = Job(examples, {}, [], [batch], chunk_size=512, shard_by_batch=False)
    shares = [job.share(Shard(i, 3)) for i in range(3)]
    assert [len(mine) for mine, _ in shares] == [4, 3, 3]
    assert sorted(e.id for mine, _ in shares for e in mine) == sorted(e.id for e in examples)
    assert [e.id for e in shares[0][0]] == ["q0", "q3", "q6", "q9"]  # question order within a share
    by_batch = Job(examples, {}, [], [batch], chunk_size=512, shard_by_batch=True)
    assert [len(by_batch.share(Shard(i, 3))[0]) for i in range(3)] == [10, 0, 0]


def test_cpu_ranks_get_their_cores_and_know_how_many_engines_share_the_memory():
    from tokenskip.backends import CPU_ENGINES_VARIABLE
    from tokenskip.evaluation.parallel import rank_environments

    first, second = rank_environments(2, 1, [], [0, 1, 2, 3])
    assert (first["VLLM_CPU_OMP_THREADS_BIND"], second["VLLM_CPU_OMP_THREADS_BIND"]) == ("0,1", "2,3")
    assert first[CPU_ENGINES_VARIABLE] == second[CPU_ENGINES_VARIABLE] == "2"
    # GPU ranks each have their own memory
    assert rank_environments(2, 2, ["0", "1", "2", "3"], [0]) == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                                {"CUDA_VISIBLE_DEVICES": "2,3"}]

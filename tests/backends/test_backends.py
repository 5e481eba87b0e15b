"""Generation backends: truly greedy transformers decoding, and the vLLM call contract."""

from __future__ import annotations

import importlib.machinery
import json
import shutil
import subprocess
import sys
import types

import pytest
import torch
from conftest import ROOT

from testkit.tiny_models import greedy_alone
from tokenskip.backends import DecodingSettings
from tokenskip.backends.hf import HFBackend
from tokenskip.backends.vllm import lora_rank_limit
from tokenskip.models.loading import load_tokenizer, stop_token_ids
from tokenskip.stages import evaluate


@pytest.fixture()
def penalized_model_dir(tiny_lm_dir, tmp_path):
    """The tiny model, with a generation_config that would change greedy outputs if obeyed."""
    folder = tmp_path / "penalized"
    shutil.copytree(tiny_lm_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(repetition_penalty=3.0, no_repeat_ngram_size=2, do_sample=True, temperature=0.7, top_k=5)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def argmax_decode(model, tokenizer, prompt: str, steps: int) -> list[int]:
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return greedy_alone(model, ids, steps, set(stop_token_ids(tokenizer)))


def test_hf_backend_is_plain_greedy_whatever_the_model_config_says(penalized_model_dir):
    tokenizer = load_tokenizer(str(penalized_model_dir))
    backend = HFBackend(str(penalized_model_dir), tokenizer, settings=DecodingSettings(max_new_tokens=12),
                        batch_size=3, device="cpu", dtype=torch.float32)
    prompts = ["<|im_start|>user\nHi<|im_end|>\n", "<|im_start|>user\nA much longer question here?<|im_end|>\n",
               "<|im_start|>user\n2+2<|im_end|>\n"]
    completions = backend.generate(prompts)
    for prompt, completion in zip(prompts, completions):
        expected = argmax_decode(backend.model, tokenizer, prompt, 12)
        assert completion.n_tokens == len(expected)
        assert completion.text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("max_new_tokens, context, expected", [
    (32768, 131072, 32768 + 4096),  # R1-distill: sized to the run, not to its 128k context
    (32768, 32768, 32768),  # never above the model's own context
    (512, None, 512 + 4096),  # context unknown (a hub id): the run's need
])
def test_vllm_context_follows_the_generation_budget(max_new_tokens, context, expected):
    from tokenskip.backends.vllm import max_model_len

    assert max_model_len(max_new_tokens, context) == expected


@pytest.mark.parametrize("rank, limit", [(8, 8), (12, 16), (64, 64), (100, 128)])
def test_lora_rank_limit_fits_the_adapter(rank, limit):
    assert lora_rank_limit(rank) == limit


class FakeVLLM:
    """Records what the toolkit asks of vLLM; answers with the prompt's length as text."""

    calls: dict = {}

    def __init__(self):
        self.module = types.ModuleType("vllm")
        self.module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
        self.module.LLM = self._llm_class()
        self.module.SamplingParams = lambda **kwargs: ("params", kwargs)
        lora = types.ModuleType("vllm.lora")
        request = types.ModuleType("vllm.lora.request")
        request.LoRARequest = lambda name, id_, path: ("lora", name, id_, path)
        lora.request = request
        self.modules = {"vllm": self.module, "vllm.lora": lora, "vllm.lora.request": request}

    def _llm_class(self):
        calls = self.calls

        class LLM:
            def __init__(self, **kwargs):
                calls["init"] = kwargs

            def generate(self, inputs, params, lora_request=None, use_tqdm=True):
                calls.setdefault("generate", []).append((inputs, params, lora_request))
                output = types.SimpleNamespace
                return [output(outputs=[output(text=f"len={len(item['prompt_token_ids'])} \\boxed{{1}}",
                                               token_ids=[7, 7, 7])]) for item in inputs]

        return LLM


def test_vllm_backend_contract(tiny_lm_dir, tmp_path, monkeypatch):
    fake = FakeVLLM()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 12}))
    [metrics] = evaluate.main([
        "--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path / "out"), "--model-size", "t",
        "--benchmark", "math", "--data-type", "test", "--data-path", str(ROOT / "datasets" / "sample" / "test.jsonl"),
        "--use_vllm", "--use_adapter", "--adapter-path", str(adapter), "--compression_ratio", "0.7",
        "--max_new_tokens", "1024", "--max_num_examples", "5",
    ])
    init = FakeVLLM.calls["init"]
    assert init["tensor_parallel_size"] == 2 and init["enable_lora"] and init["max_lora_rank"] == 16
    assert init["generation_config"] == "vllm"
    assert init["max_model_len"] == 2048  # 1024 new tokens + prompt room, capped at the tiny model's context
    assert init["dtype"] == "float32"  # --dtype auto on a machine without CUDA, as the hf backend resolves it
    assert init["disable_log_stats"] is False  # the request stats per-request latency comes from
    assert init["kv_cache_memory_bytes"] > 0  # sized to the run on a CPU, not 90% of the machine
    [(inputs, params, lora)] = FakeVLLM.calls["generate"]
    assert len(params) == len(inputs) == 5  # one SamplingParams per request: each has its own seed
    assert len({p[1]["seed"] for p in params}) == 5
    for _, p in params:
        assert p["max_tokens"] == 717 and isinstance(p["max_tokens"], int)  # round(1024 * 0.7)
        assert p["temperature"] == 0.0 and p["repetition_penalty"] == 1.0
    assert lora == ("lora", "tokenskip", 1, str(adapter))
    tokenizer = load_tokenizer(str(tiny_lm_dir))
    predictions = tmp_path / "out" / "t" / "TokenSkip" / "0.7" / "samples" / "predictions.jsonl"
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    for record in records:  # each answer went back to its own question, prompt tokenized once, no extra BOS
        prompt_ids = tokenizer(record["prompt"], add_special_tokens=False).input_ids
        assert record["model_output"].startswith(f"len={len(prompt_ids)} ")
    assert metrics["backend"] == "vllm" and metrics["n_samples"] == 5


def test_cpu_attention_and_cache_change_no_output(tiny_lm_dir):
    """The CPU speed-ups (grouped-query SDPA, preallocated cache) give transformers' own tokens."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(tiny_lm_dir))
    backend = HFBackend(str(tiny_lm_dir), tokenizer, settings=DecodingSettings(max_new_tokens=40), batch_size=4,
                        device="cpu", dtype=torch.float32)
    assert backend.model.config._attn_implementation == "tokenskip_sdpa_gqa"
    assert backend.model.config.num_key_value_heads < backend.model.config.num_attention_heads  # GQA exercised
    prompts = [f"<|im_start|>user\nQuestion number {i} {'with more words ' * i}?<|im_end|>\n" for i in range(4)]
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="sdpa").eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        expected = reference.generate(**batch, generation_config=backend.generation_config)
    for completion, row in zip(backend.generate(prompts), expected[:, batch.input_ids.shape[1]:].tolist()):
        assert completion.text == backend._completion(row).text


def test_vllm_request_timings_and_finish_reason_reach_the_completions(monkeypatch):
    from tokenskip.backends.vllm import VLLMBackend, request_latency

    ns = types.SimpleNamespace
    # vLLM 0.32's RequestStateStats: arrival_time is wall-clock, the *_ts fields the engine core's monotonic clock
    timed = ns(outputs=[ns(text="a", token_ids=[1, 2], finish_reason="stop")],
               metrics=ns(arrival_time=1.7e9, queued_ts=100.0, first_token_ts=100.5, last_token_ts=102.25))
    capped = ns(outputs=[ns(text="b", token_ids=[1] * 8, finish_reason="length")],
                metrics=ns(arrival_time=1.7e9, queued_ts=100.0, first_token_ts=100.5, last_token_ts=103.0))
    untimed = ns(outputs=[ns(text="c", token_ids=[1], finish_reason="stop")], metrics=None)
    assert request_latency(timed) == 2.25 and request_latency(capped) == 3.0 and request_latency(untimed) is None

    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: generate() only needs these
    backend.tokenizer = lambda text, add_special_tokens: ns(input_ids=[1])
    backend.settings = ns(max_new_tokens=8, temperature=0.0, top_p=1.0, seed=0)
    backend.make_sampling_params = lambda **kwargs: kwargs
    backend.stop_ids, backend.lora_request = [0], None
    backend.llm = ns(generate=lambda inputs, params, lora_request, use_tqdm: [timed, capped, untimed])
    completions = backend.generate(["x", "y", "z"])
    assert [c.latency_s for c in completions] == [2.25, 3.0, None]
    assert [c.capped for c in completions] == [False, True, False]


def test_request_seeds_differ_per_sample_and_repeat_per_run():
    from tokenskip.backends import request_seed

    seeds = [request_seed(42, f"gsm8k-test-7/{j}") for j in range(4)]
    assert len(set(seeds)) == 4  # k samples of one question: k seeds
    assert seeds == [request_seed(42, f"gsm8k-test-7/{j}") for j in range(4)]  # a rerun: the same k
    assert request_seed(43, "gsm8k-test-7/0") != seeds[0]  # another run seed: other draws
    assert all(0 <= seed < 2**31 for seed in seeds)


def test_cpu_kv_cache_is_sized_to_the_run_and_the_machine(smollm2_dir):
    from tokenskip.backends.vllm import cpu_kv_cache_bytes, kv_bytes_per_token

    per_token = kv_bytes_per_token(str(smollm2_dir), "float32")
    assert per_token == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32
    assert kv_bytes_per_token(str(smollm2_dir), "bfloat16") == per_token // 2
    gib = 1 << 30
    assert cpu_kv_cache_bytes(per_token, 4224, 20 * gib) == per_token * 4224 * 16  # 16 sequences fit
    assert cpu_kv_cache_bytes(per_token, 4224, 1 * gib) == int(0.4 * gib)  # a busy machine: 40% of what is free
    assert cpu_kv_cache_bytes(per_token, 4224, 1 << 20) == per_token * 4224  # never below one sequence
    assert cpu_kv_cache_bytes(None, 4224, 20 * gib) is None  # unknown shape: vLLM decides


@pytest.mark.parametrize("environ, cores, added", [
    ({}, 2, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, 2, {}),  # the user's setting stays
    ({}, 32, {}),  # a big machine: vLLM's own default
])
def test_small_cpu_machines_give_every_core_to_the_model(environ, cores, added):
    from tokenskip.backends.vllm import cpu_environment

    assert cpu_environment(environ, cores) == added


def test_an_unreachable_server_is_a_one_line_error(tiny_lm_dir, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "evaluation.py", "--model-path", str(tiny_lm_dir), "--output-dir",
                             str(tmp_path), "--data-path", str(ROOT / "datasets" / "sample" / "test.jsonl"),
                             "--max_num_examples", "2", "--backend", "server", "--server-url",
                             f"http://127.0.0.1:{port}/v1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the server at http://127.0.0.1:{port}/v1")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("extra, message", [
    (["--backend", "server"], "--backend server needs --server-url"),
    (["--server-url", "http://localhost:8000/v1"], "--server-url goes with --backend server"),
    (["--backend", "server", "--server-url", "http://x/v1", "--server-concurrency", "0"], "--server-concurrency"),
    (["--backend", "server", "--server-url", "http://x/v1", "--use_adapter", "--adapter-path", "a"],
     "name it with --served-adapter"),
])
def test_server_flags_are_checked(tiny_lm_dir, tmp_path, extra, message):
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match=message):
        evaluate.main(["--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path), *extra])


# ---------------------------------------------------------------- one engine over several GPUs or nodes, Ray


def test_pipeline_parallel_and_the_executor_reach_the_engine(tiny_lm_dir, tmp_path, monkeypatch):
    """--pipeline_parallel_size and --distributed-executor-backend are vLLM's own engine arguments
    (TP x PP on one node with mp, across a Ray cluster's nodes with ray): they reach `LLM(...)`."""
    fake = FakeVLLM()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    evaluate.main(["--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path / "out"), "--model-size", "t",
                   "--data-path", str(ROOT / "datasets" / "sample" / "test.jsonl"), "--backend", "vllm",
                   "--tensor_parallel_size", "2", "--pipeline_parallel_size", "3",
                   "--distributed-executor-backend", "mp", "--max_num_examples", "2", "--max_new_tokens", "16"])
    init = FakeVLLM.calls["init"]
    assert (init["tensor_parallel_size"], init["pipeline_parallel_size"]) == (2, 3)
    assert init["distributed_executor_backend"] == "mp"


def test_gpu_memory_utilization_reaches_a_gpu_engine_only():
    from tokenskip.backends.vllm import engine_arguments

    class Tokenizer:
        name_or_path = "tok"

    def arguments(**extra):
        return engine_arguments("no-such-model", Tokenizer(), settings=DecodingSettings(max_new_tokens=16),
                                dtype="float16", **extra)

    assert arguments(on_cpu=False, gpu_memory_utilization=0.45)["gpu_memory_utilization"] == 0.45
    assert "gpu_memory_utilization" not in arguments(on_cpu=False)  # vLLM's own default
    # a CPU engine's KV cache is sized from free memory instead: the GPU share means nothing there
    assert "gpu_memory_utilization" not in arguments(on_cpu=True, gpu_memory_utilization=0.45)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_gpu_memory_utilization_out_of_range_is_one_line(tiny_lm_dir, tmp_path, value):
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match="--gpu-memory-utilization is the share"):
        evaluate.main(["--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path), "--backend", "vllm",
                       "--gpu-memory-utilization", value])


def test_an_unset_executor_is_left_to_vllm():
    from tokenskip.backends.vllm import engine_arguments

    class Tokenizer:
        name_or_path = "tok"

    arguments = engine_arguments("no-such-model", Tokenizer(), settings=DecodingSettings(max_new_tokens=16),
                                 dtype="float16", on_cpu=False)
    assert "distributed_executor_backend" not in arguments and "pipeline_parallel_size" not in arguments
    assert arguments["tensor_parallel_size"] == 1 and "enable_lora" not in arguments


def test_cpu_engines_on_one_machine_share_the_kv_cache_memory(smollm2_dir, monkeypatch):
    from tokenskip.backends import vllm as engine
    from tokenskip.models.loading import load_tokenizer

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(engine, "free_memory_bytes", lambda: 10 * 2**30)
    tokenizer = load_tokenizer(str(smollm2_dir))

    def kv(engines):
        return engine.engine_arguments(str(smollm2_dir), tokenizer, settings=DecodingSettings(max_new_tokens=4096),
                                       dtype="float32", on_cpu=True,
                                       engines_sharing_memory=engines)["kv_cache_memory_bytes"]

    # 16 sequences of 4,096 + prompt tokens cap one engine below 40% of 10 GiB; two engines get half of that each
    assert kv(2) <= 0.2 * 10 * 2**30 < kv(1) <= 0.4 * 10 * 2**30


@pytest.mark.parametrize("extra, message", [
    (["--pipeline_parallel_size", "0"], "--pipeline_parallel_size must be 1 or more"),
    (["--backend", "hf", "--pipeline_parallel_size", "2"], "go with --backend vllm or ray, not hf"),
    (["--backend", "hf", "--distributed-executor-backend", "ray"], "go with --backend vllm or ray, not hf"),
    (["--backend", "ray", "--distributed-executor-backend", "mp"], "Ray Data picks each replica's executor"),
])
def test_engine_parallel_flags_are_checked(tiny_lm_dir, tmp_path, extra, message):
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match=message):
        evaluate.main(["--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path), *extra])


def test_the_ray_executor_without_ray_is_a_one_line_error(monkeypatch):
    import importlib.util

    from tokenskip.backends.vllm import check_executor
    from tokenskip.core.errors import UsageError

    check_executor("mp")  # nothing to check
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    with pytest.raises(UsageError, match="needs Ray in this environment: `make setup-ray`"):
        check_executor("ray")


def test_ray_backend_needs_vllm_here(tiny_lm_dir, tmp_path, monkeypatch):
    """In .venv (no vLLM) --backend ray says where it runs, before anything loads."""
    from tokenskip import backends
    from tokenskip.core.errors import UsageError

    monkeypatch.setattr(backends, "vllm_available", lambda: False)
    with pytest.raises(UsageError, match="--backend ray runs vLLM engines through Ray Data: `make setup-ray`"):
        backends.choose_backend("ray")


@pytest.mark.parametrize("cores, replicas, bundle", [(2, 1, 1), (3, 2, 1), (17, 2, 8), (33, 4, 8)])
def test_ray_replicas_on_a_cpu_share_the_cores(cores, replicas, bundle):
    """Each replica asks for an equal share of the cores (one kept for Ray Data's light stages); on
    GPUs Ray Data reserves TP x PP GPUs per replica itself."""
    from tokenskip.backends.ray_data import replica_placement

    assert replica_placement(True, cores, replicas) == {"bundles": [{"CPU": bundle}]}
    assert replica_placement(False, cores, replicas) is None


def test_ray_replicas_need_a_core_each():
    from tokenskip.backends.ray_data import replica_placement
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match="needs a core per replica; Ray sees 2"):
        replica_placement(True, 2, 4)


def test_ray_rows_spread_over_the_replicas():
    from tokenskip.backends.ray_data import MAX_ROWS_PER_BATCH, replica_environment, rows_per_batch

    assert rows_per_batch(8, 2) == 4 and rows_per_batch(1, 4) == 1  # every replica gets a block of a short chunk
    assert rows_per_batch(10_000, 2) == MAX_ROWS_PER_BATCH  # a long one streams in small blocks
    # replicas sharing a node use the threads Ray gives them instead of binding to every core
    assert replica_environment({}, True, 2, 2)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in replica_environment({"VLLM_CPU_OMP_THREADS_BIND": "0-3"}, True, 2, 8)
    assert replica_environment({}, False, 2, 2) == {}


def test_data_parallel_cpu_ranks_split_the_kv_cache_memory(tiny_lm_dir, tmp_path, monkeypatch):
    """Each of N vLLM-CPU ranks sizes its KV cache from 1/N of the free memory: N engines that each took
    40% of it would together ask for more than the machine has."""
    from tokenskip.backends import CPU_ENGINES_VARIABLE
    from tokenskip.backends import vllm as engine

    fake = FakeVLLM()
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(engine, "free_memory_bytes", lambda: 12 * 2**30)
    seen = []
    real = engine.cpu_kv_cache_bytes
    monkeypatch.setattr(engine, "cpu_kv_cache_bytes", lambda per_token, model_len, free: seen.append(free) or
                        real(per_token, model_len, free))
    for engines, folder in (("1", "one"), ("3", "three")):
        monkeypatch.setenv(CPU_ENGINES_VARIABLE, engines)
        evaluate.main(["--model-path", str(tiny_lm_dir), "--output-dir", str(tmp_path / folder), "--model-size", "t",
                       "--data-path", str(ROOT / "datasets" / "sample" / "test.jsonl"), "--backend", "vllm",
                       "--max_num_examples", "1", "--max_new_tokens", "8"])
    assert seen == [12 * 2**30, 4 * 2**30]

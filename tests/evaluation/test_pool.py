"""Runs of one call that share one slot queue (tokenskip/evaluation/pool.py): the same outputs as each run made
alone, question for question and byte for byte, for the base model's baselines (a token cap per request, budget
forcing's second phase) and an adapter's γ sweep; each run's time is its share of the pooled call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_files import cli_args

from tokenskip.backends.slots import LATENCY_BASIS, POOLED_LATENCY_BASIS
from tokenskip.core import layout
from tokenskip.stages import evaluate

COMMON = ("--max_num_examples", "6", "--max_new_tokens", "16", "--eval_batch_size", "4")
BASELINES = {"truncation": "Truncation", "prompt": "PromptReduction", "budget": "BudgetForcing"}
FOLDERS = ("Original/test", *(f"{folder}/{ratio}" for folder in BASELINES.values() for ratio in ("0.9", "0.5")),
           "TokenSkip/1.0", "TokenSkip/0.5")


@pytest.fixture(scope="module")
def varied(tmp_path_factory, smollm2_dir):
    """A tiny Llama with large random weights (varied answers) and a random LoRA on it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from testkit.tiny_models import save_tiny_llama

    model_dir = save_tiny_llama(tmp_path_factory.mktemp("varied"), AutoTokenizer.from_pretrained(smollm2_dir),
                                init_std=1.0)
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path_factory.mktemp("varied-adapter")
    peft.save_pretrained(adapter)
    return model_dir, adapter


def predictions(root: Path, folder: str) -> bytes:
    return (root / "tiny" / folder / "samples" / layout.PREDICTIONS).read_bytes()


def test_pooled_runs_write_what_each_run_writes_alone(varied, tmp_path, capsys):
    model, adapter = varied
    pooled = tmp_path / "pooled"
    evaluate.main(cli_args(model, pooled, *COMMON, "--runs", "original", "truncation", "prompt", "budget",
                           "tokenskip", "--adapter-path", str(adapter), "--compression_ratio", "1.0", "0.5",
                           "--baseline-ratios", "0.9", "0.5"))
    said = capsys.readouterr().out
    # the original with the prompt runs; truncation and budget forcing, whose budgets need the original, after it;
    # then the adapter's two
    assert [line for line in said.splitlines() if "share one queue" in line] == [
        "3 runs share one queue: 18 prompts", "4 runs share one queue: 24 prompts",
        "2 runs share one queue: 12 prompts"]
    alone = tmp_path / "alone"
    calls = [[], *(["--baseline", baseline, "--compression_ratio", ratio] for baseline in BASELINES
                   for ratio in ("0.9", "0.5")),
             *(["--use_adapter", "--adapter-path", str(adapter), "--compression_ratio", ratio]
               for ratio in ("1.0", "0.5"))]
    for extra in calls:
        evaluate.main(cli_args(model, alone, *COMMON, *extra))
    assert "share one queue" not in capsys.readouterr().out
    for folder in FOLDERS:
        assert predictions(pooled, folder) == predictions(alone, folder), folder
    forced = [json.loads(line) for line in predictions(pooled, "BudgetForcing/0.5").splitlines()]
    assert any("forced" in record for record in forced)  # the second phase ran, outside the pool
    # each pooled run was charged its share of the pooled call: time and tokens/s of its own, its requests' latency
    # (from taking a slot: the time it queued behind other runs' requests is theirs)
    for folder in FOLDERS:
        metrics = json.loads((pooled / "tiny" / folder / "samples" / layout.METRICS).read_text())
        assert metrics["sample_latency"] > 0 and metrics["request_latency"]["n"] == 6
        assert metrics["request_latency"]["basis"] == POOLED_LATENCY_BASIS
    alone_basis = json.loads((alone / "tiny" / "Original/test" / "samples" / layout.METRICS).read_text())
    assert alone_basis["request_latency"]["basis"] == LATENCY_BASIS
    # every run on the same clock: the report compares per-request latencies
    from tokenskip.stages import report

    [table] = report.main([str(pooled)])
    assert {row.latency_basis for row in table.rows} == {"request"}


def test_a_started_run_resumes_on_its_own(varied, tmp_path, capsys):
    model, adapter = varied
    args = cli_args(model, tmp_path, *COMMON, "--use_adapter", "--adapter-path", str(adapter),
                    "--compression_ratio", "1.0", "0.5")
    evaluate.main(args)
    first = {ratio: predictions(tmp_path, f"TokenSkip/{ratio}") for ratio in ("1.0", "0.5")}
    # γ 0.5 cut back to two answers, γ 1.0 left finished: the rerun pools nothing and writes the same files
    samples = tmp_path / "tiny" / "TokenSkip" / "0.5" / "samples"
    lines = (samples / layout.PREDICTIONS).read_text().splitlines(keepends=True)
    (samples / layout.PREDICTIONS).write_text("".join(lines[:2]))
    (samples / layout.METRICS).unlink()
    capsys.readouterr()
    evaluate.main(args)
    assert "share one queue" not in capsys.readouterr().out
    assert {ratio: predictions(tmp_path, f"TokenSkip/{ratio}") for ratio in ("1.0", "0.5")} == first

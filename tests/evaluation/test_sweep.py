"""One call, several kinds of run (`--runs`): the base model, the adapter at every γ and the baselines
on one loaded model, each run's folder exactly as separate calls write it."""

from __future__ import annotations

import pytest
from stage_files import cli_args, read_lines

from tokenskip.core.errors import UsageError
from tokenskip.evaluation import run as evaluation_run
from tokenskip.stages import evaluate

RUN_FOLDERS = ["Original/test", "TokenSkip/1.0", "TokenSkip/0.5", "Truncation/0.5", "PromptReduction/0.5"]


def counting_backends(monkeypatch) -> list:
    created = []
    create = evaluation_run.create_backend

    def record(config, model_path, tokenizer, adapter_path, adapter_config):
        created.append(adapter_path)
        return create(config, model_path, tokenizer, adapter_path, adapter_config)

    monkeypatch.setattr(evaluation_run, "create_backend", record)
    return created


def test_one_call_writes_every_run_as_separate_calls_do(tiny_lm_dir, tiny_adapter, tmp_path, monkeypatch):
    common = ["--max_num_examples", "5", "--max_new_tokens", "12"]
    adapter = ["--adapter-path", str(tiny_adapter)]
    separate, swept = tmp_path / "separate", tmp_path / "swept"
    evaluate.main(cli_args(tiny_lm_dir, separate, *common))
    evaluate.main(cli_args(tiny_lm_dir, separate, *common, *adapter, "--use_adapter", "--compression_ratio", "1.0",
                           "0.5"))
    for baseline in ("truncation", "prompt"):
        evaluate.main(cli_args(tiny_lm_dir, separate, *common, "--baseline", baseline, "--compression_ratio", "0.5"))

    created = counting_backends(monkeypatch)
    metrics = evaluate.main(cli_args(tiny_lm_dir, swept, *common, *adapter, "--runs", "tokenskip", "prompt",
                                     "original", "truncation", "--compression_ratio", "1.0", "0.5"))
    # the base model's runs first (truncation reads the original's CoT length), then the adapter's
    assert [(m["method"], m["compression_ratio"]) for m in metrics] == [
        ("original", 1.0), ("truncation", 0.5), ("prompt", 0.5), ("tokenskip", 1.0), ("tokenskip", 0.5)]
    assert created == [None, str(tiny_adapter)]  # the hf backend loaded once per model, not once per run
    for folder in RUN_FOLDERS:
        samples = f"tiny/{folder}/samples"
        assert (swept / samples / "predictions.jsonl").read_bytes() == (separate / samples /
                                                                       "predictions.jsonl").read_bytes(), folder
    adapter_outputs = [r["model_output"] for r in read_lines(swept / "tiny/TokenSkip/1.0/samples/predictions.jsonl")]
    base_outputs = [r["model_output"] for r in read_lines(swept / "tiny/Original/test/samples/predictions.jsonl")]
    assert adapter_outputs != base_outputs  # the adapter was applied to its runs only


def test_a_resumed_sweep_reloads_nothing_it_does_not_need(tiny_lm_dir, tiny_adapter, tmp_path, monkeypatch):
    args = cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3", "--adapter-path", str(tiny_adapter),
                    "--runs", "original", "tokenskip", "--compression_ratio", "0.5")
    evaluate.main(args)
    created = counting_backends(monkeypatch)
    evaluate.main(args)  # every folder finished: no model is loaded at all
    assert created == []


@pytest.mark.parametrize("extra, message", [
    (["--runs", "tokenskip"], "--runs tokenskip needs --adapter-path"),
    (["--runs", "original", "--baseline", "prompt", "--compression_ratio", "0.5"], "add prompt to --runs"),
    (["--runs", "truncation"], "these baselines run at ratios below 1"),
    (["--baseline-ratios", "0.5"], "--baseline-ratios goes with --runs"),
    (["--runs", "original", "--baseline-ratios", "1.5"], r"--baseline-ratios must be in \(0, 1\]"),
])
def test_bad_sweeps_are_one_line_errors(tiny_lm_dir, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, *extra))

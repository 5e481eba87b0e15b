"""evaluation.py: outputs, resume after a kill, regrading, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from stage_files import SAMPLE_TEST, cli_args, read_lines, run_script

from tokenskip.core.errors import UsageError
from tokenskip.evaluation import run as evaluation_run
from tokenskip.stages import evaluate

PREDICTION_FIELDS = {"dataset", "id", "messages", "answer", "reference", "prompt", "model_output", "prediction",
                     "cot_length", "accuracy"}
METRIC_FIELDS = {"n_samples", "accuracy", "avg_cot_length", "sample_latency", "compression_ratio",
                 "tokens_per_second", "n_invalid", "grader", "backend", "model_path", "adapter_path", "decoding",
                 "second_grader", "second_grader_accuracy", "grader_disagreements", "grading_timeouts"}


def test_run_writes_predictions_and_metrics(tiny_lm_dir, tmp_path):
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "6"))
    samples = tmp_path / "tiny" / "Original" / "test" / "samples"
    records = read_lines(samples / "predictions.jsonl")
    assert len(records) == 6 and all(PREDICTION_FIELDS <= set(r) for r in records)
    assert METRIC_FIELDS <= set(json.loads((samples / "metrics.json").read_text()))
    assert metrics["n_samples"] == 6 and metrics["backend"] == "hf"
    assert metrics["accuracy"] == sum(r["accuracy"] for r in records) / 6
    assert metrics["avg_cot_length"] == sum(r["cot_length"] for r in records) / 6
    assert all(0 < r["output_tokens"] <= 8 for r in records)
    # file order is the dataset's, whatever order the batches ran in
    expected_ids = [r["id"] for r in records]
    assert expected_ids == sorted(expected_ids, key=lambda i: int(i.rsplit("-", 1)[1]))


def test_ratio_tag_reaches_every_prompt_and_its_own_folder(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3", "--compression_ratio", "0.5"))
    records = read_lines(tmp_path / "tiny" / "Original" / "test" / "ratio_0.5" / "samples" / "predictions.jsonl")
    assert all(r["prompt"].endswith("<|eot_id|>0.5<|eot_id|><|im_end|>\n<|im_start|>assistant\n") for r in records)


def test_several_ratios_load_the_model_once_and_match_separate_runs(tiny_lm_dir, tmp_path, monkeypatch):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path / "one", "--max_num_examples", "3"))
    evaluate.main(cli_args(tiny_lm_dir, tmp_path / "many", "--max_num_examples", "3"))
    separate = {ratio: evaluate.main(cli_args(tiny_lm_dir, tmp_path / "one", "--max_num_examples", "3",
                                              "--baseline", "truncation", "--compression_ratio", ratio))[0]
                for ratio in ("0.9", "0.3")}
    loads = []
    create_backend = evaluation_run.create_backend
    monkeypatch.setattr(evaluation_run, "create_backend", lambda *a: loads.append(a) or create_backend(*a))
    together = evaluate.main(cli_args(tiny_lm_dir, tmp_path / "many", "--max_num_examples", "3",
                                      "--baseline", "truncation", "--compression_ratio", "0.9", "0.3"))
    assert len(loads) == 1
    assert [m["compression_ratio"] for m in together] == [0.9, 0.3]
    assert together[0]["decoding"]["max_new_tokens"] > together[1]["decoding"]["max_new_tokens"]
    for metrics, ratio in zip(together, ("0.9", "0.3")):
        assert metrics["decoding"] == separate[ratio]["decoding"]
        one, many = (tmp_path / root / "tiny" / "Truncation" / ratio / "samples" / "predictions.jsonl"
                     for root in ("one", "many"))
        assert read_lines(one) == read_lines(many)


def test_finished_run_is_not_generated_again(tiny_lm_dir, tmp_path, monkeypatch):
    first = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3"))
    monkeypatch.setattr(evaluation_run, "create_backend", lambda *a: pytest.fail("a finished run loaded a model"))
    second = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3"))
    assert first == second


def test_resuming_with_other_settings_is_refused(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2"))
    with pytest.raises(UsageError, match="other settings.*max_new_tokens: 8 -> 9"):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2", "--max_new_tokens", "9"))


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_lm_dir, tmp_path):
    args = ["--max_new_tokens", "48", "--eval_batch_size", "1"]
    uninterrupted = tmp_path / "a"
    assert run_script(*cli_args(tiny_lm_dir, uninterrupted, *args)).returncode == 0

    killed = tmp_path / "b"
    log = killed / "tiny" / "Original" / "test" / "samples" / "predictions.jsonl"
    process = subprocess.Popen([sys.executable, "evaluation.py", *cli_args(tiny_lm_dir, killed, *args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    lines_at_kill = log.read_text().count("\n")
    assert 3 <= lines_at_kill < 40, "the kill must land mid-run"
    assert not (log.parent / "metrics.json").exists()

    assert run_script(*cli_args(tiny_lm_dir, killed, *args)).returncode == 0
    expected = (uninterrupted / "tiny" / "Original" / "test" / "samples" / "predictions.jsonl").read_bytes()
    assert log.read_bytes() == expected


def test_torn_last_line_is_dropped_on_resume(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "4"))
    samples = tmp_path / "tiny" / "Original" / "test" / "samples"
    complete = (samples / "predictions.jsonl").read_bytes()
    lines = complete.splitlines(keepends=True)
    (samples / "predictions.jsonl").write_bytes(b"".join(lines[:2]) + lines[2][:15])  # killed mid-write
    (samples / "metrics.json").unlink()
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "4"))
    assert (samples / "predictions.jsonl").read_bytes() == complete


def test_regrade_rewrites_run_in_place(tiny_lm_dir, tmp_path):
    evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3"))
    samples = tmp_path / "tiny" / "Original" / "test" / "samples"
    records = read_lines(samples / "predictions.jsonl")
    records[0]["model_output"] = f"So the total is \\boxed{{{records[0]['answer']}}}."
    (samples / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_script("--regrade", samples / "predictions.jsonl")
    assert result.returncode == 0, result.stderr
    regraded = read_lines(samples / "predictions.jsonl")
    assert regraded[0]["accuracy"] is True and regraded[0]["prediction"] == records[0]["answer"]
    metrics = json.loads((samples / "metrics.json").read_text())
    assert metrics["accuracy"] == sum(r["accuracy"] for r in regraded) / 3
    assert metrics["sample_latency"] is not None


def test_embedded_model_answers_with_the_issue_command(smollm2_dir, tmp_path):
    result = run_script("--model-path", smollm2_dir, "--benchmark", "gsm8k", "--data-type", "test",
                        "--data-path", SAMPLE_TEST, "--max_num_examples", "4", "--eval_batch_size", "4",
                        "--max_new_tokens", "48", "--output-dir", tmp_path / "smol" / "gsm8k", "--model-size", "135m")
    assert result.returncode == 0, result.stderr
    samples = tmp_path / "smol" / "gsm8k" / "135m" / "Original" / "test" / "samples"
    records = read_lines(samples / "predictions.jsonl")
    assert len(records) == 4
    assert all(r["model_output"].strip() and r["cot_length"] > 0 for r in records)


# --- bad input: one line on stderr, exit code 2, nothing half-written -------------------------------------------

def bad_dataset(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing model": (lambda tmp, model: ["--model-path", tmp / "models" / "nope"], "download_models.py"),
    "malformed jsonl": (lambda tmp, model: ["--model-path", model, "--data-path",
                                            bad_dataset(tmp, '{"question": "a", "answer": "#### 1"}\n{oops\n')],
                        r"data.jsonl:2: not valid JSON"),
    "missing question": (lambda tmp, model: ["--model-path", model, "--data-path",
                                             bad_dataset(tmp, '{"answer": "#### 1"}\n')], "no 'question'"),
    "missing answer": (lambda tmp, model: ["--model-path", model, "--data-path",
                                           bad_dataset(tmp, '{"question": "a"}\n')], "no 'answer'"),
    "ratio above 1": (lambda tmp, model: ["--model-path", model, "--compression_ratio", "1.5"], r"\(0, 1\]"),
    "ratio zero": (lambda tmp, model: ["--model-path", model, "--compression_ratio", "0"], r"\(0, 1\]"),
    "adapter missing": (lambda tmp, model: ["--model-path", model, "--use_adapter", "--adapter-path", tmp / "none"],
                        "not a LoRA adapter folder"),
    "empty dataset": (lambda tmp, model: ["--model-path", model, "--data-path", bad_dataset(tmp, "")], "empty"),
    "vllm absent": (lambda tmp, model: ["--model-path", model, "--backend", "vllm", "--data-path", SAMPLE_TEST],
                    "needs vLLM"),
    "unknown flag": (lambda tmp, model: ["--model-path", model, "--max_new_token", "5"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_error(case, tiny_lm_dir, tmp_path):
    if case == "vllm absent" and evaluate.choose_backend.__globals__["vllm_available"]():
        pytest.skip("vLLM is installed here")
    make_args, message = BAD_INPUTS[case]
    out_dir = tmp_path / "out"
    result = run_script(*make_args(tmp_path, tiny_lm_dir), "--output-dir", out_dir, "--model-size", "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not out_dir.exists() or not any(p.name == "predictions.jsonl" for p in out_dir.rglob("*"))


def test_truncation_baseline_caps_output_at_ratio_of_original_cot_length(tiny_lm_dir, tmp_path):
    [original] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3"))
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "3", "--baseline", "truncation",
                                     "--compression_ratio", "0.5"))
    budget = max(1, round(0.5 * original["avg_cot_length"]))
    assert metrics["method"] == "truncation" and metrics["decoding"]["max_new_tokens"] == budget
    records = read_lines(tmp_path / "tiny" / "Truncation" / "0.5" / "samples" / "predictions.jsonl")
    assert all(r["output_tokens"] <= budget for r in records)
    assert all("<|eot_id|>" not in r["prompt"] for r in records)  # the base model gets no ratio tag


def test_prompt_baseline_asks_for_fewer_words(tiny_lm_dir, tmp_path):
    [metrics] = evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--max_num_examples", "2", "--baseline", "prompt",
                                     "--compression_ratio", "0.7", "--label", "ask"))
    records = read_lines(tmp_path / "tiny" / "PromptReduction" / "0.7" / "samples" / "predictions.jsonl")
    question = records[0]["messages"][0]["content"]
    request = "Please reduce 30% of the words in your Chain-of-Thought process."
    assert f"{question}\n{request}<|im_end|>" in records[0]["prompt"]
    assert metrics["method"] == "prompt" and metrics["label"] == "ask"


def test_truncation_without_an_original_run_is_refused(tiny_lm_dir, tmp_path):
    with pytest.raises(UsageError, match="needs the base model's run first"):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--baseline", "truncation", "--compression_ratio", "0.5"))


def test_baseline_with_adapter_is_refused(tiny_lm_dir, tmp_path):
    with pytest.raises(UsageError, match="drop --use_adapter"):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, "--baseline", "prompt", "--compression_ratio", "0.5",
                               "--use_adapter", "--adapter-path", str(tmp_path)))

"""The training-free baselines beyond the paper's two (tokenskip/evaluation/baselines.py): budget forcing,
Chain-of-Draft, the token-budget prompt and NoThinking — their prompts, the two-phase generation, their
folders, sweeps and shards, and the report's Pareto frontier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_files import cli_args, read_lines

from tokenskip.backends import Completion
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.evaluation import baselines
from tokenskip.prompting import prompts, templates, thinking
from tokenskip.reporting.tables import Row, pareto
from tokenskip.stages import evaluate

COMMON = ("--max_num_examples", "4", "--max_new_tokens", "12")


def test_prompt_strings_are_the_papers():
    """Facts from the papers, character for character (a changed string is a different baseline)."""
    assert prompts.DRAFT_REQUEST == ("Think step by step, but only keep a minimum draft for each thinking step, "
                                     "with 5 words at most.")
    assert prompts.budget_request(43) == "Let's think step by step and use less than 43 tokens:"
    assert prompts.NO_THINKING_PREFILL == "Okay, I think I have finished thinking.\n</think>"
    assert prompts.FORCED_THINKING_END == "\n</think>\n\nFinal Answer:"
    assert prompts.BOXED_CUE == "\n\nThe final answer is: $\\boxed{"


@pytest.mark.parametrize("output, prompt, end", [
    ("Step 1: 3 + 4 = 7. Step 2", "<|im_start|>assistant\n", prompts.BOXED_CUE),  # CoT cut: the answer cue
    ("3 + 4 = 7.\n\nThe final answer is: $\\bo", "", ""),  # the CoT ended, its answer was cut: continue it
    ("<think>\nso 3 + 4", "", prompts.FORCED_THINKING_END),  # thinking cut (opened in the output)
    ("so 3 + 4", "<｜Assistant｜><think>\n", prompts.FORCED_THINKING_END),  # opened in the prompt (R1)
    ("so 7.\n</think>\n\nThe answer is", "<｜Assistant｜><think>\n", ""),  # thinking done, answer cut
])
def test_budget_forcing_ends_the_thinking_or_continues_the_answer(output, prompt, end):
    assert baselines.forced_end(output, prompt) == end


class ScriptedBackend:
    """Answers from a script, recording each call (prompts, budget, ids)."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def generate(self, prompt_texts, max_new_tokens=None, ids=None):
        self.calls.append((list(prompt_texts), max_new_tokens, list(ids)))
        return [self.answers[len(self.calls) - 1][i] for i in range(len(prompt_texts))]


def test_budget_forcing_generates_the_answers_of_cut_outputs_only():
    first = [Completion("short. \n\nThe final answer is: $\\boxed{7}$", 9, capped=False, latency_s=1.0),
             Completion("a long CoT cut", 6, capped=True, latency_s=2.0)]
    second = [Completion("12}$", 4, capped=False, latency_s=0.5)]
    backend = ScriptedBackend([first, second])
    [done, forced] = baselines.generate(backend, ["P1", "P2"], 6, ["q1", "q2"], "budget", answer_tokens=64)
    assert backend.calls == [(["P1", "P2"], 6, ["q1", "q2"]),
                             (["P2a long CoT cut" + prompts.BOXED_CUE], 64, ["q2/answer"])]
    assert done == first[0] and done.forced is None
    assert forced.text == "a long CoT cut" + prompts.BOXED_CUE + "12}$"
    assert (forced.n_tokens, forced.capped, forced.latency_s, forced.forced) == (10, False, 2.5, prompts.BOXED_CUE)
    assert prompts.cot_of(forced.text) == "a long CoT cut"  # the CoT is the first phase's text alone


def test_other_methods_generate_once():
    backend = ScriptedBackend([[Completion("x", 6, capped=True)]])
    assert baselines.generate(backend, ["P"], 6, ["q"], "truncation")[0].forced is None
    assert len(backend.calls) == 1


def test_nothinking_prefills_the_thinking_block():
    r1 = "<｜User｜>q<｜Assistant｜><think>\n"
    assert baselines.prefilled("nothinking", r1) == r1 + "Okay, I think I have finished thinking.\n</think>"
    qwen3 = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert baselines.prefilled("nothinking", qwen3) == qwen3 + "<think>\n" + prompts.NO_THINKING_PREFILL
    assert baselines.prefilled("cod", qwen3) == qwen3
    assert not thinking.split_output("7", baselines.prefilled("nothinking", r1)).is_thinking


def test_nothinking_is_refused_on_models_without_thinking():
    with pytest.raises(UsageError, match="smollm2 family\\) has none"):
        baselines.check_model("nothinking", templates.family_named("smollm2"), "auto")
    with pytest.raises(UsageError, match="--thinking off"):
        baselines.check_model("nothinking", templates.family_named("qwen3"), "off")
    baselines.check_model("nothinking", templates.family_named("deepseek-r1"), "auto")


@pytest.mark.parametrize("method, ratio, folder", [
    ("budget", 0.5, "BudgetForcing/0.5"), ("budget-prompt", 0.7, "BudgetPrompt/0.7"),
    ("cod", 1.0, "ChainOfDraft"), ("nothinking", 1.0, "NoThinking"),
])
def test_each_baseline_has_its_folder_and_reads_back(method, ratio, folder, tmp_path):
    run = layout.run_dir(tmp_path / "7b", method=method, ratio=ratio, data_type="test")
    assert run == tmp_path / "7b" / folder
    where = layout.place(layout.samples_dir(run) / layout.METRICS)
    assert (where.method, where.ratio, where.data_type, where.group) == (method, ratio, "test", tmp_path / "7b")


@pytest.mark.parametrize("method, folder", [
    ("truncation", "Truncation/64tok"), ("budget", "BudgetForcing/64tok"), ("budget-prompt", "BudgetPrompt/64tok"),
])
def test_a_budget_in_tokens_has_its_folder_and_reads_back(method, folder, tmp_path):
    run = layout.run_dir(tmp_path / "7b", method=method, ratio=1.0, data_type="test", budget_tokens=64)
    assert run == tmp_path / "7b" / folder
    where = layout.place(layout.samples_dir(run) / layout.METRICS)
    assert (where.method, where.ratio, where.budget_tokens, where.data_type) == (method, 1.0, 64, "test")
    train = layout.run_dir(tmp_path / "7b", method=method, ratio=1.0, data_type="train", budget_tokens=64)
    assert layout.place(layout.samples_dir(train) / layout.METRICS).data_type == "train"


def test_only_budgeted_baselines_are_filed_by_tokens(tmp_path):
    with pytest.raises(ValueError, match="budgeted baseline"):
        layout.run_dir(tmp_path, method="prompt", ratio=1.0, data_type="test", budget_tokens=64)
    # a folder named like a budget under a method that takes none is not a run of it
    assert layout.place(tmp_path / "TokenSkip" / "64tok" / "samples" / layout.METRICS) is None
    assert layout.place(tmp_path / "BudgetForcing" / "tok" / "samples" / layout.METRICS) is None


@pytest.mark.parametrize("extra, message", [
    (["--baseline", "cod", "--budget-tokens", "8"], "use it with --baseline truncation or budget or budget-prompt.*"
                                                    "cod takes none"),
    (["--budget-tokens", "8"], "use it with --baseline truncation"),
    (["--baseline", "budget", "--compression_ratio", "0.5", "--budget-tokens", "8"], "drop --compression_ratio"),
    (["--baseline", "budget", "--budget-tokens", "0"], "1 token or more"),
    (["--runs", "original", "cod", "--budget-tokens", "8"], "add one of them to --runs"),
    (["--runs", "original", "budget", "prompt", "--budget-tokens", "8"], "--runs prompt: these baselines run at "
                                                                         "ratios below 1"),
    (["--baseline", "cod", "--compression_ratio", "0.5"], "--baseline cod takes no γ"),
    (["--baseline", "budget"], "--baseline budget runs the base model at ratios below 1"),
    (["--runs", "original", "budget"], "these baselines run at ratios below 1"),
    (["--baseline", "budget-prompt", "--compression_ratio", "0.5"], "needs the base model's run first"),
    (["--baseline", "nothinking"], "has none; it applies to reasoning models"),
])
def test_bad_baseline_calls_are_one_line_errors(tiny_lm_dir, tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        evaluate.main(cli_args(tiny_lm_dir, tmp_path, *COMMON, *extra))
    assert not list(tmp_path.rglob("predictions.jsonl"))


def samples(root: Path, folder: str) -> Path:
    return root / "tiny" / folder / "samples"


def test_one_sweep_runs_every_baseline_with_the_budget_of_the_original(tiny_lm_dir, tmp_path):
    metrics = evaluate.main(cli_args(tiny_lm_dir, tmp_path, *COMMON, "--runs", "original", "truncation", "budget",
                                     "budget-prompt", "cod", "--baseline-ratios", "0.5"))
    assert [(m["method"], m["compression_ratio"]) for m in metrics] == [
        ("original", 1.0), ("truncation", 0.5), ("budget", 0.5), ("budget-prompt", 0.5), ("cod", 1.0)]
    budget = max(1, round(0.5 * metrics[0]["avg_cot_length"]))
    settings = json.loads((samples(tmp_path, "BudgetForcing/0.5") / layout.RUN_SETTINGS).read_text())
    assert (settings["budget"], settings["max_new_tokens"], settings["answer_tokens"]) == (
        budget, budget, baselines.FORCED_ANSWER_TOKENS)
    forced = read_lines(samples(tmp_path, "BudgetForcing/0.5") / layout.PREDICTIONS)
    truncated = read_lines(samples(tmp_path, "Truncation/0.5") / layout.PREDICTIONS)
    for record, cut in zip(forced, truncated):
        # never more than the budget plus the forced answer; the CoT is the first phase, as truncation's output
        assert record["output_tokens"] <= budget + baselines.FORCED_ANSWER_TOKENS
        assert record["model_output"].startswith(cut["model_output"])
        if cut["capped"]:  # cut at the budget: the answer was forced, its tokens counted
            assert record["forced"] == prompts.BOXED_CUE and record["output_tokens"] > cut["output_tokens"]
            assert prompts.cot_of(record["model_output"]) == cut["model_output"]
    assert any("forced" in record for record in forced)
    [prompted] = read_lines(samples(tmp_path, "BudgetPrompt/0.5") / layout.PREDICTIONS)[:1]
    assert f"Let's think step by step and use less than {budget} tokens:" in prompted["prompt"]
    [draft] = read_lines(samples(tmp_path, "ChainOfDraft") / layout.PREDICTIONS)[:1]
    assert prompts.DRAFT_REQUEST in draft["prompt"]
    # the report: every method in one table, the frontier computed over all of them
    from tokenskip.stages import report

    [table] = report.main([str(tmp_path)])
    assert {row.method_id for row in table.rows} == {"original", "truncation", "budget", "budget-prompt", "cod"}
    assert len(table.frontier) == 5 and any(point.dominated_by is None for point in table.frontier)
    text = (tmp_path / "results.md").read_text()
    assert "### Accuracy against CoT tokens: the Pareto frontier" in text and "| Chain-of-Draft | – |" in text


def test_budgets_given_in_tokens_need_no_original_run_and_get_their_own_rows(tiny_lm_dir, tmp_path):
    alone, tmp_path = tmp_path / "alone", tmp_path / "sweep"
    metrics = evaluate.main(cli_args(tiny_lm_dir, tmp_path, *COMMON, "--runs", "truncation", "budget",
                                     "budget-prompt", "--budget-tokens", "5", "9"))
    assert [(m["method"], m["budget_tokens"], m["budget"]) for m in metrics] == [
        ("truncation", 5, 5), ("truncation", 9, 9), ("budget", 5, 5), ("budget", 9, 9), ("budget-prompt", 5, 5),
        ("budget-prompt", 9, 9)]
    assert not (tmp_path / "tiny" / "Original").exists()  # the budget is given: no base-model run is asked for
    for tokens in (5, 9):
        settings = json.loads((samples(tmp_path, f"BudgetForcing/{tokens}tok") / layout.RUN_SETTINGS).read_text())
        assert (settings["budget_tokens"], settings["budget"], settings["max_new_tokens"]) == (tokens, tokens, tokens)
        for record in read_lines(samples(tmp_path, f"BudgetForcing/{tokens}tok") / layout.PREDICTIONS):
            assert record["output_tokens"] <= tokens + baselines.FORCED_ANSWER_TOKENS
        for record in read_lines(samples(tmp_path, f"Truncation/{tokens}tok") / layout.PREDICTIONS):
            assert record["output_tokens"] <= tokens
        [prompted] = read_lines(samples(tmp_path, f"BudgetPrompt/{tokens}tok") / layout.PREDICTIONS)[:1]
        assert f"use less than {tokens} tokens:" in prompted["prompt"]
    # one baseline alone at one budget: the same outputs as in the sweep
    evaluate.main(cli_args(tiny_lm_dir, alone, *COMMON, "--baseline", "budget", "--budget-tokens", "5"))
    assert (samples(alone, "BudgetForcing/5tok") / layout.PREDICTIONS).read_bytes() == (
        samples(tmp_path, "BudgetForcing/5tok") / layout.PREDICTIONS).read_bytes()
    # the report: a row per budget, its target the budget; no γ adherence for them; named so on the frontier
    from tokenskip.stages import report

    [table] = report.main([str(tmp_path)])
    assert [(row.method_id, row.target) for row in table.rows] == [
        ("truncation", "9 tok"), ("truncation", "5 tok"), ("budget", "9 tok"), ("budget", "5 tok"),
        ("budget-prompt", "9 tok"), ("budget-prompt", "5 tok")]
    assert table.adherence == []
    assert {f"{point.method} {point.target}" for point in table.frontier} >= {"Budget forcing 5 tok",
                                                                               "Truncation 9 tok"}
    assert "| Budget forcing | 5 tok |" in (tmp_path / "results.md").read_text()


def test_budget_forcing_shards_merge_to_the_unsharded_run(tiny_lm_dir, tmp_path):
    common = [*COMMON, "--max_num_examples", "6"]
    evaluate.main(cli_args(tiny_lm_dir, tmp_path / "one", *common))
    sharded = tmp_path / "two"
    evaluate.main(cli_args(tiny_lm_dir, sharded, *common))
    args = cli_args(tiny_lm_dir, sharded, *common, "--baseline", "budget", "--compression_ratio", "0.5",
                    "--eval_batch_size", "2", "--num-shards", "2")
    unsharded = cli_args(tiny_lm_dir, tmp_path / "one", *common, "--baseline", "budget", "--compression_ratio", "0.5",
                         "--eval_batch_size", "2")
    evaluate.main(unsharded)  # the same batches as the shards'
    for index in ("0", "1"):
        evaluate.main([*args, "--shard-index", index])
    evaluate.main([*args, "--merge-shards"])
    one = samples(tmp_path / "one", "BudgetForcing/0.5") / layout.PREDICTIONS
    assert (samples(sharded, "BudgetForcing/0.5") / layout.PREDICTIONS).read_bytes() == one.read_bytes()


def row(method: str, ratio: float, tokens: float, accuracy: float) -> Row:
    return Row(method=method, ratio=ratio, accuracy=accuracy, accuracy_change=None, cot_tokens=tokens,
               actual_ratio=None, latency=None, speedup=None, n_samples=10, path="", method_id=method)


def test_the_pareto_frontier_names_what_dominates_each_row():
    rows = [row("original", 1.0, 100, 50), row("truncation", 0.5, 50, 10), row("budget", 0.5, 50, 30),
            row("cod", 1.0, 120, 50), row("tokenskip", 0.5, 60, 50)]
    points = {(p.method, p.target): p.dominated_by for p in pareto(rows)}
    assert points == {("budget", "0.5"): None, ("truncation", "0.5"): "budget 0.5", ("tokenskip", "0.5"): None,
                      ("original", "1"): "tokenskip 0.5", ("cod", "–"): "tokenskip 0.5"}
    assert [p.cot_tokens for p in pareto(rows)] == [50, 50, 60, 100, 120]
    # a run at a budget given in tokens is named by it
    rows.append(Row(method="budget", ratio=1.0, accuracy=55, accuracy_change=None, cot_tokens=40, actual_ratio=None,
                    latency=None, speedup=None, n_samples=10, path="", method_id="budget", budget_tokens=32))
    points = {(p.method, p.target): p.dominated_by for p in pareto(rows)}
    assert points[("budget", "32 tok")] is None and points[("tokenskip", "0.5")] == "budget 32 tok"


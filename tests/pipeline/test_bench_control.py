"""bench/bench_control.py's pure parts: the variant table and its CLI, the word-dropping rule, the goal
check and the tables rendered from hand-made metrics (the stages themselves run in the bench)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_control", ROOT / "bench" / "bench_control.py")
bc = importlib.util.module_from_spec(_spec)
sys.modules["bench_control"] = bc  # dataclasses look their module up by name
_spec.loader.exec_module(bc)


def test_builtin_variants_cover_the_levers_and_start_with_the_demo_recipe():
    names = [v.name for v in bc.VARIANTS]
    assert names[0] == "A" and len(set(names)) == len(names) >= 5
    demo = bc.VARIANTS_BY_NAME["A"]
    assert (demo.data, demo.scorer, demo.mix, demo.epochs, demo.lr, demo.rank) == ("own-greedy", "cts", "all", 1.0,
                                                                                   3e-4, 8)
    levers = {(v.data, v.scorer, v.mix, v.epochs, v.lr, v.rank, v.ratio_format) for v in bc.VARIANTS}
    assert len(levers) == len(bc.VARIANTS)  # no two variants are the same recipe
    for variant in bc.VARIANTS:
        assert bc.check_variant(variant) is variant
        assert bc.parse_spec(variant.spec()) == bc.replace(variant, note="")  # spec round-trips


def test_select_variants_keeps_the_given_order_and_adds_custom_ones():
    assert [v.name for v in bc.select_variants("G, A,G")] == ["G", "A"]
    assert [v.name for v in bc.select_variants(None)] == [v.name for v in bc.VARIANTS]
    picked = bc.select_variants("W,A", ["W=scorer:worddrop,lr:1e-3,rank:32,epochs:2"])
    assert [v.name for v in picked] == ["W", "A"]
    w = picked[0]
    assert (w.data, w.scorer, w.mix, w.epochs, w.lr, w.rank) == ("own-greedy", "worddrop", "all", 2.0, 1e-3, 32)
    assert [v.name for v in bc.select_variants(None, ["W=mix:sample"])][-1] == "W"


@pytest.mark.parametrize("names, added, message", [
    ("Z", [], "unknown variant 'Z'"),
    (None, ["A=lr:1e-3"], "built-in variant"),
    (None, ["W=colour:red"], "key among"),
    (None, ["W=rank:big"], "rank must be a int"),
    (None, ["W=scorer:llmlingua9"], "scorer must be one of"),
    (None, ["W=data:web"], "data must be one of"),
    (None, ["W=epochs:0"], "must be positive"),
    (None, ["no-equals-sign"], "NAME=key:value"),
    (",", [], "names none"),
])
def test_select_variants_refuses_bad_input(names, added, message):
    with pytest.raises(ValueError, match=message):
        bc.select_variants(names, added)


def test_cli_parsing_and_settings():
    parser = bc.build_parser()
    args = parser.parse_args(["--smoke", "--variants", "A,E", "--test-questions", "3"])
    settings = bc.settings_of(args)
    assert settings.max_steps == 2 and settings.eval_tokens == 16 and settings.test_questions == 3
    assert bc.settings_of(parser.parse_args([])) == bc.FULL
    assert bc.FULL.test_questions == 32 and bc.FULL.eval_tokens == 128 and bc.FULL.latency_probe == 8
    command = bc.variant_command(bc.VARIANTS_BY_NAME["E"], args)
    assert command == ".venv/bin/python bench/bench_control.py --variants E --smoke"
    custom = bc.parse_spec("W=lr:1e-3")
    assert "--add" in bc.variant_command(custom, parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--nope"])
    assert bc.main(["--list", "--variants", "A"]) == 0


def test_word_drop_keeps_numbers_and_hits_the_ratio():
    words = lambda text: len(text.split())  # noqa: E731  (a token counter: one token per word)
    text = "First, Sara had 15 stickers.\n\nShe gave 5 of them to a friend, so 15 - 5 = 10 stickers are left."
    total = words(text)
    for ratio in (0.9, 0.7, 0.5):
        out = bc.word_drop(text, ratio, words)
        assert words(out) <= ratio * total
        assert words(out) > ratio * total - 2  # stops as soon as the budget is met
    half = bc.word_drop(text, 0.5, words)
    assert "15 - 5 = 10" in half  # math and numbers go last
    assert "the" not in half.split() and "to" not in half.split()
    assert bc.word_drop(text, 0.9, words).count("\n\n") == 1  # paragraph breaks stay
    # deterministic and nested: a smaller γ keeps a subset of a larger γ's words
    assert set(bc.word_drop(text, 0.5, words).split()) <= set(bc.word_drop(text, 0.7, words).split())
    assert bc.word_drop(text, 0.5, words) == bc.word_drop(text, 0.5, words)


def test_drop_order_puts_function_words_first_and_math_last():
    words = ["Tom", "has", "3", "apples", "and", "the", "apples.", "2+1=3", "Tom"]
    order = bc.drop_order(words)
    # function words by rank; then repeats (apples., Tom); then first mentions; numbers and math last
    assert [words[i] for i in order] == ["the", "and", "has", "apples.", "Tom", "Tom", "apples", "3", "2+1=3"]
    assert order[3:6] == [6, 8, 0]


def _result(name, means, self_ratios, speedup, inversions, capped=(0, 0, 0, 0)):
    gammas = ("1.0", "0.9", "0.7", "0.5")
    per = {g: {"mean": m, "median": m - 1, "capped": c, "accuracy": 25.0, "self_ratio": r, "speedup": speedup,
               "self_ratio_both_correct": r, "n_both_correct": 5, "token_speedup": 1.8}
           for g, m, r, c in zip(gammas, means, (1.0, *self_ratios), capped)}
    return {"name": name, "levers": "own-greedy, cts", "command": f"bench_control.py --variants {name}",
            "per_gamma": per, "mean_abs_error": 0.05, "inversions": inversions, "pairs": 6, "train_records": 138,
            "train_loss": 1.234, "train_data_ratio_0.5": 0.52,
            "seconds": {"stage1": 120.0, "stage2": 30.0, "stage3": 2.0, "train": 150.4, "eval": 140.0,
                        "variant": 292.4, "recipe": 302.4, "train_load": 2.1, "eval_load": 3.45}}


def test_goal_failures():
    good = _result("A", (60.0, 52.0, 45.0, 36.0), (0.85, 0.72, 0.6), 1.5, 0)
    assert bc.goal_failures(good) == []
    bad = _result("B", (53.2, 51.4, 50.6, 50.6), (0.97, 0.95, 0.95), 1.37, 2)
    failures = bc.goal_failures(bad)
    assert failures == ["inversions 2", "ratio@0.5 0.95", "speed-up 1.37x"]
    assert bc.goal_failures({"name": "X"})  # nothing measured: nothing met


def test_render_markdown_from_hand_made_metrics():
    good = _result("A", (60.0, 52.0, 45.0, 36.0), (0.85, 0.72, 0.6), 1.5, 0, capped=(3, 2, 1, 0))
    failed = {"name": "C", "levers": "own-sampled, cts", "error": "stage2 exited 1: no CoT left"}
    base = {"mean": 101.3, "median": 99.0, "capped": 9, "accuracy": 9.4}
    text = bc.render_markdown([good, failed], base)
    lines = text.splitlines()
    header = lines[0]
    assert header.count("|") == lines[1].count("|")  # header and separator agree
    assert all(line.count("|") == header.count("|") for line in lines[2:5])  # base, A and the failed row
    row = next(line for line in lines if line.startswith("| A |"))
    assert "60.0 / 52.0 / 45.0 / 36.0" in row and "3 / 2 / 1 / 0" in row
    assert "0.85 / 0.72 / 0.60" in row and "0.60 (5)" in row and "0 of 6" in row
    assert "1.50x (1.80x)" in row and row.rstrip().endswith("| met |") and "2m30s" in row
    assert lines[2].startswith("| base |") and "101.3" in lines[2]
    assert "failed: stage2 exited 1" in next(line for line in lines if line.startswith("| C |"))
    cost = [line for line in lines if line.startswith("| A |")][1]
    assert "`bench_control.py --variants A`" in cost and "1.234" in cost and "0.52" in cost
    assert "5m02s" in cost and "2.1 / 3.5" in cost  # recipe cost, load during training / evaluation
    assert bc._minutes(59.6) == "1m00s" and bc._minutes(119.5) == "2m00s" and bc._minutes(7.2) == "7s"


def test_token_speedup_pairs_questions():
    assert bc.token_speedup({"a": 100, "b": 50, "c": 10}, {"a": 50, "b": 25}) == 2.0
    assert bc.token_speedup({"a": 100}, {"b": 10}) is None


def test_scale_variants_are_listed_and_reach_the_papers_scale():
    scale = [v for v in bc.VARIANTS if v.scale]
    assert {v.name for v in scale} >= {"S3", "S7", "S3T"}
    assert bc.VARIANTS_BY_NAME["S3T"].ratio_format == "token"
    with pytest.raises(ValueError, match="ratio_format must be eot or token"):
        bc.select_variants(None, ["W=ratio_format:digits"])
    for variant in scale:
        source = bc.DATA_SOURCES[variant.data]
        assert source.kind == "mixed" and (source.questions is None or source.questions >= 3000)
        assert variant.mix == "sample"  # one γ per question, as the original draws it
        assert bc.parse_spec(variant.spec()) == bc.replace(variant, note="")
    assert bc.SCALE.test_questions >= 200 and bc.SCALE.eval_ratios == (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
    assert bc.SCALE.save_steps and bc.SCALE.train_batch == 8
    with pytest.raises(ValueError, match="profile:scale"):
        bc.select_variants(None, ["W=data:gsm8k-3k"])  # GSM8K-scale data on the small profile
    with pytest.raises(ValueError, match="profile must be one of"):
        bc.select_variants(None, ["W=profile:huge"])


def test_scale_goal_needs_falling_lengths_and_both_ratios():
    good = {"inversions": 1, "per_gamma": {"0.5": {"self_ratio": 0.7}, "0.9": {"self_ratio": 0.9}}}
    assert bc.scale_goal_failures(good) == []
    flat = {"inversions": 0, "per_gamma": {"0.5": {"self_ratio": 0.95}, "0.9": {"self_ratio": 0.97}}}
    assert bc.scale_goal_failures(flat) == ["ratio@0.5 0.95"]
    inverted = {"inversions": 3, "per_gamma": {"0.5": {"self_ratio": 0.6}, "0.9": {"self_ratio": 0.8}}}
    assert bc.scale_goal_failures(inverted) == ["inversions 3", "ratio@0.9 0.80"]


@pytest.mark.slow
def test_scale_smoke_runs_end_to_end_and_training_resumes(tmp_path, smollm2_dir):
    """`--smoke --variants S3`: every stage on tiny settings (GSM8K from the data folder, else the sample
    sets), then a rerun after the adapter's final save is lost resumes from the last checkpoint."""
    import json
    import subprocess

    out = tmp_path / "bc"
    command = [sys.executable, str(ROOT / "bench" / "bench_control.py"), "--smoke", "--variants", "S3",
               "--out-dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "variants" / "S3" / "result.json").read_text())
    assert result["profile"] == "scale" and result["eval_ratios"] == [1.0, 0.7, 0.5]
    records = result["records"]
    assert records["own"] + records["reference"] == records["questions"] == 10 == result["train_records"]
    assert records["stage1_questions"] == 4
    assert sum(result["records_per_gamma"].values()) == 10
    assert set(result["per_gamma"]) == {"1.0", "0.7", "0.5"} and result["base"]["n"] == 3
    for name in ("adapter", "base"):
        matrix = result["gamma_matrix"][name]
        assert matrix["ratios"] == [1.0, 0.7, 0.5] and matrix["n_questions"] == 2
        assert len(matrix["mean_loglik"]) == 3 and all(len(row) == 3 for row in matrix["mean_loglik"])
    assert (out / "variants" / "S3" / "gamma_matrix.png").is_file()
    assert (out / "variants" / "S3" / "runs" / "results.md").is_file()
    assert "### S3" in done.stdout and "γ-probe, adapter" in done.stdout

    # an interrupted training run: checkpoints, no final adapter -> the rerun resumes from the last checkpoint
    adapter = out / "variants" / "S3" / "adapter"
    assert sorted(c.name for c in adapter.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    (adapter / "adapter_model.safetensors").unlink()
    (out / "variants" / "S3" / "result.json").unlink()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resuming from" in done.stdout and "checkpoint-2" in done.stdout
    log = (out / "logs" / "train-S3.log").read_text()
    assert "Resuming training from" in log
    segments = json.loads((out / "variants" / "S3" / "result.json").read_text())["train_segments"]
    assert len(segments) == 2 and segments[1]["resumed_from"] == "checkpoint-2"


def test_render_prints_the_tables_of_a_results_file(tmp_path, capsys):
    import json

    result = {"name": "S9", "levers": "gsm8k-3k, worddrop", "profile": "scale",
              "command": "bench_control.py --variants S9",
              "eval_ratios": [1.0, 0.5], "inversions": 0, "pairs": 1,
              "per_gamma": {"1.0": {"mean": 100.0, "self_ratio": 1.0}, "0.5": {"mean": 60.0, "self_ratio": 0.6}},
              "base": {"mean": 150.0, "accuracy": 2.0},
              "gamma_matrix": {"adapter": {"ratios": [1.0, 0.5], "mean_loglik": [[-1.0, -1.2], [-1.5, -1.1]],
                                           "n_questions": 4, "compressed_rows_peaking_at_own_tag": 1,
                                           "compressed_rows": 1, "tagged_spread": [0.0, 0.0]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [result]}))
    assert bc.main(["--render", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == bc.render_results([result])
    assert "| adapter, γ = 0.5 | 60.0 |" in out and "| 0.5 | -1.500 | **-1.100** |" in out
    assert "Follows γ (issue 28's criteria): no (ratio@0.9 –)" in out
    (tmp_path / "other.json").write_text("[]")
    assert bc.main(["--render", str(tmp_path / "other.json")]) == 2


@pytest.mark.slow
def test_token_format_smoke_carries_the_format_through_every_stage(tmp_path, smollm2_dir):
    """`--smoke --variants S3T`: stage 3 writes <COMP_xx> tokens, LLaMA-Factory adds and trains them, the
    evaluation and the γ-probe prompt with them."""
    import json
    import subprocess

    out = tmp_path / "bc"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_control.py"), "--smoke", "--variants", "S3T",
                           "--out-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [data] = (out / "llamafactory").glob("*_token/data/*_token.json")
    inputs = [record["input"] for record in json.loads(data.read_text())]
    assert any("<COMP_" in text for text in inputs) and not any("<|eot_id|>" in text for text in inputs)
    run = json.loads(next((out / "variants" / "S3T" / "runs").rglob("TokenSkip/0.5/samples/run.json")).read_text())
    assert run["ratio_format"] == "token"
    result = json.loads((out / "variants" / "S3T" / "result.json").read_text())
    assert result["gamma_matrix"]["adapter"]["ratio_format"] == "token"
    assert sum(result["records_per_gamma"].values()) == 10 and set(result["records_per_gamma"]) - {"1.0"}

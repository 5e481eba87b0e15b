"""report.py's γ-control numbers on a hand-made outputs tree: known predictions in, known ratios out.

The designed group: the original run, TokenSkip at γ = 1.0 / 0.8 / 0.5 and truncation at 0.5,
each with predictions.jsonl. TokenSkip/0.5 keeps three questions short (50, 60, 40 of the γ = 1.0
run's 100 tokens) and rambles on the fourth (250, wrong), so the ratio on all shared questions is
1.0 and on the questions both runs got right 0.5; its extra question q5 is in no other run, so it
counts in its own mean and median but in no ratio.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.reporting.tables import POINTS_KEY, collect
from tokenskip.stages import report


def write_run(group: Path, relative: str, cots: list[float], correct: list[bool], extra: list[dict] | None = None,
              **metrics) -> None:
    """A finished run: predictions.jsonl (ids q1, q2, ...) and a metrics.json whose accuracy and mean
    CoT agree with the records unless given."""
    folder = group / relative / "samples"
    folder.mkdir(parents=True)
    records = [{"id": f"q{i + 1}", "cot_length": cot, "accuracy": ok, **(extra[i] if extra else {})}
               for i, (cot, ok) in enumerate(zip(cots, correct))]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    metrics = {"n_samples": len(records), "accuracy": sum(correct) / len(correct),
               "avg_cot_length": sum(cots) / len(cots), **metrics}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def write_summary(group: Path, folder: str, method: str, ratios: dict[str, float]) -> None:
    """Stage 2's compression_summary.json, as tokenskip.compression.driver writes it."""
    path = group / folder / "compression_summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"method": method, "ratios": {
        gamma: {"target": float(gamma), "mean_actual_ratio": value, "mean_original_tokens": 200.0}
        for gamma, value in ratios.items()}}))


def request(mean: float) -> dict:
    return {"mean": mean, "p50": mean, "p90": mean, "n": 4}


@pytest.fixture()
def group(tmp_path) -> Path:
    group = tmp_path / "Qwen2.5-7B-Instruct" / "gsm8k" / "7b"
    write_run(group, "Original/test", [200, 200, 200, 200], [True, True, True, False],
              n_capped=3, median_cot_length=200.0, sample_latency=1.0, request_latency=request(2.0))
    # no `capped` flags: an older run; the 512-token output is at the cap of decoding.max_new_tokens
    write_run(group, "TokenSkip/1.0", [100, 100, 100, 100], [True] * 4,
              extra=[{"output_tokens": n} for n in (120, 130, 140, 512)], decoding={"max_new_tokens": 512},
              median_cot_length=99.0, sample_latency=1.0, request_latency=request(1.0))
    write_run(group, "TokenSkip/0.8", [80, 80, 80, 80], [True] * 4, sample_latency=0.5, request_latency=None)
    write_run(group, "TokenSkip/0.5", [50, 60, 40, 250, 1000], [True, True, True, False, True],
              extra=[{"capped": flag} for flag in (False, False, False, True, True)],
              sample_latency=0.25, request_latency=request(0.5))
    write_run(group, "Truncation/0.5", [100, 100, 100, 100], [True, False, False, False], sample_latency=0.5)
    write_summary(group, "CTS_Compression", "cts", {"0.5": 0.55, "0.8": 0.83})
    write_summary(group, "Compression", "llmlingua2", {"0.5": 0.62})
    return group


def rows_of(table) -> dict:
    return {(row.method, row.ratio): row for row in table.rows}


def test_ratios_on_the_same_questions(group):
    [table] = collect(group.parents[2])
    rows = rows_of(table)
    half = rows[("TokenSkip", 0.5)]
    assert half.ratio_vs_self == pytest.approx(400 / 400)  # q5 is in no other run
    assert half.ratio_vs_self_both_correct == pytest.approx(150 / 300)  # the wrong 250-token answer is out
    assert half.n_both_correct_self == 3
    assert half.ratio_vs_original == pytest.approx(400 / 800)
    assert half.ratio_vs_original_both_correct == pytest.approx(150 / 600)
    assert half.n_both_correct_original == 3
    assert half.actual_ratio == pytest.approx(280 / 200)  # today's column: the means over each run's questions
    assert rows[("TokenSkip", 1.0)].ratio_vs_self == pytest.approx(1.0)
    assert rows[("TokenSkip", 0.8)].ratio_vs_self == pytest.approx(0.8)
    truncated = rows[("Truncation", 0.5)]
    assert truncated.ratio_vs_original == pytest.approx(0.5)
    assert truncated.ratio_vs_original_both_correct == pytest.approx(0.5) and truncated.n_both_correct_original == 1
    assert truncated.ratio_vs_self is None and truncated.ratio_vs_self_both_correct is None  # no Truncation/1.0


def test_median_and_capped_from_metrics_or_records(group):
    [table] = collect(group.parents[2])
    rows = rows_of(table)
    assert rows[("Original", 1.0)].median_cot_tokens == 200.0 and rows[("Original", 1.0)].n_capped == 3
    assert rows[("TokenSkip", 1.0)].median_cot_tokens == 99.0  # metrics.json's own, when it has one
    assert rows[("TokenSkip", 1.0)].n_capped == 1  # output_tokens >= decoding.max_new_tokens
    assert rows[("TokenSkip", 0.5)].median_cot_tokens == statistics.median([50, 60, 40, 250, 1000])
    assert rows[("TokenSkip", 0.5)].n_capped == 2  # the records' capped flags
    assert rows[("Truncation", 0.5)].n_capped is None  # neither flags nor a token cap to compare with


def test_adherence_summary(group):
    [table] = collect(group.parents[2])
    summaries = {summary.method: summary for summary in table.adherence}
    assert set(summaries) == {"TokenSkip", "Truncation"}  # not the original
    tokenskip = summaries["TokenSkip"]
    assert tokenskip.basis == "self"
    assert tokenskip.actual == pytest.approx({"1.0": 1.0, "0.8": 0.8, "0.5": 1.0})
    assert tokenskip.targets == [0.8, 0.5]
    assert tokenskip.mean_abs_error == pytest.approx((0.0 + 0.5) / 2)
    # mean CoT 100 → 80 → 280: γ = 0.5 is longer than both γ = 1.0 and γ = 0.8
    assert (tokenskip.monotonic, tokenskip.inversions, tokenskip.pairs) == (False, 2, 3)
    truncation = summaries["Truncation"]
    assert truncation.basis == "original" and truncation.mean_abs_error == pytest.approx(0.0)
    assert (truncation.monotonic, truncation.inversions, truncation.pairs) == (None, 0, 0)


def test_a_method_that_keeps_to_gamma_is_monotonic(tmp_path):
    group = tmp_path / "7b"
    write_run(group, "Original/test", [100] * 2, [True] * 2)
    for gamma, cot in ((1.0, 90), (0.9, 85), (0.7, 60), (0.6, 60), (0.5, 45)):
        write_run(group, f"TokenSkip/{gamma}", [cot] * 2, [True] * 2)
    [table] = collect(tmp_path)
    [summary] = table.adherence
    assert summary.basis == "self" and summary.targets == [0.9, 0.7, 0.6, 0.5]
    errors = [abs(85 / 90 - 0.9), abs(60 / 90 - 0.7), abs(60 / 90 - 0.6), abs(45 / 90 - 0.5)]
    assert summary.mean_abs_error == pytest.approx(sum(errors) / 4)
    assert (summary.monotonic, summary.inversions, summary.pairs) == (True, 0, 10)  # a tie is no inversion


def test_training_data_ratio_beside_the_adapter(group):
    [table] = collect(group.parents[2])
    rows = rows_of(table)
    assert rows[("TokenSkip", 0.5)].train_data_ratios == {"cts": 0.55, "llmlingua2": 0.62}
    assert rows[("TokenSkip", 0.8)].train_data_ratios == {"cts": 0.83}
    assert rows[("TokenSkip", 1.0)].train_data_ratios is None
    assert rows[("Truncation", 0.5)].train_data_ratios is None  # not trained on compressed CoTs
    assert [(found.method, found.ratios) for found in table.training_ratios] == [
        ("cts", {"0.5": 0.55, "0.8": 0.83}), ("llmlingua2", {"0.5": 0.62})]
    assert table.training_ratios[0].path == "Qwen2.5-7B-Instruct/gsm8k/7b/CTS_Compression/compression_summary.json"


def test_one_compression_summary_is_shown_unnamed(tmp_path):
    group = tmp_path / "7b"
    write_run(group, "Original/test", [100] * 2, [True] * 2)
    write_run(group, "TokenSkip/0.5", [50] * 2, [True] * 2)
    write_summary(group, "CTS_Compression", "cts", {"0.5": 0.53})
    report.main([str(tmp_path)])
    assert "| TokenSkip | 0.5 | 50.0 | 50.0 | – | 0.50 | – | 0.50 (2) | – | 0.53 |" in \
        (tmp_path / "results.md").read_text()


def test_speedup_uses_request_latency_where_both_have_it(group):
    [table] = collect(group.parents[2])
    rows = rows_of(table)
    half = rows[("TokenSkip", 0.5)]
    assert (half.latency_basis, half.latency, half.speedup) == ("request", 0.5, pytest.approx(2.0 / 0.5))
    assert half.sample_latency == 0.25 and half.request_latency["mean"] == 0.5
    no_request = rows[("TokenSkip", 0.8)]  # request_latency null: batch time against the original's batch time
    assert (no_request.latency_basis, no_request.latency, no_request.speedup) == ("batch", 0.5, pytest.approx(2.0))
    truncated = rows[("Truncation", 0.5)]  # absent
    assert (truncated.latency_basis, truncated.speedup) == ("batch", pytest.approx(2.0))


def test_markdown_tables_and_adherence_plot(group):
    from PIL import Image

    root = group.parents[2]
    report.main([str(root)])
    markdown = (root / "results.md").read_text()
    assert "| TokenSkip | 0.5 | 80.0% | +5.0 | 280.0 | 1.40 | 0.500 | 4.00x | 5 | request |" in markdown
    assert "| TokenSkip | 0.8 | 100.0% | +25.0 | 80.0 | 0.40 | 0.500 | 2.00x | 4 | batch |" in markdown
    assert ("| TokenSkip | 0.5 | 280.0 | 60.0 | 2 | 0.50 | 1.00 | 0.25 (3) | 0.50 (3) | cts 0.55 / llmlingua2 0.62 |"
            in markdown)
    assert "| TokenSkip | 0.8 | 80.0 | 80.0 | – | 0.40 | 0.80 | 0.40 (3) | 0.80 (4) | cts 0.83 |" in markdown
    assert "| Truncation | 0.5 | 100.0 | 100.0 | – | 0.50 | – | 0.50 (1) | – | – |" in markdown
    assert "| TokenSkip | vs γ=1.0, same questions | 0.250 | 0.8, 0.5 | no | 2 of 3 pairs |" in markdown
    assert "| Truncation | vs original, same questions | 0.000 | 0.5 | – | 0 of 0 pairs |" in markdown
    assert "![actual vs target ratio](results_adherence.png)" in markdown
    image = Image.open(root / "results_adherence.png")
    assert image.format == "PNG"
    assert image.text[POINTS_KEY] == "4"  # TokenSkip at 1.0, 0.8, 0.5; truncation at 0.5


def test_json_carries_the_new_fields(group):
    root = group.parents[2]
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(root), "--format", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [table] = json.loads(result.stdout)
    half = next(row for row in table["rows"] if row["method"] == "TokenSkip" and row["ratio"] == 0.5)
    assert half["ratio_vs_self_both_correct"] == pytest.approx(0.5)
    assert half["train_data_ratios"] == {"cts": 0.55, "llmlingua2": 0.62}
    assert half["latency_basis"] == "request" and half["n_capped"] == 2
    assert half["actual_ratio"] == pytest.approx(1.4)  # the old fields stay
    adherence = {summary["method"]: summary for summary in table["adherence"]}
    assert adherence["TokenSkip"]["inversions"] == 2 and adherence["TokenSkip"]["basis"] == "self"
    assert [found["method"] for found in table["training_ratios"]] == ["cts", "llmlingua2"]


def test_old_metrics_without_predictions(tmp_path):
    """Runs of the original scripts: only the four metrics, no predictions.jsonl; what needs the
    per-question records is "–" and adherence falls back on the means' ratio."""
    group = tmp_path / "7b"
    for relative, cot in (("Original/test", 300.0), ("TokenSkip/1.0", 280.0), ("TokenSkip/0.5", 160.0)):
        path = group / relative / "samples" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"n_samples": 100, "accuracy": 0.8, "avg_cot_length": cot, "sample_latency": 1.0}))
    [table] = report.main([str(tmp_path)])
    half = rows_of(table)[("TokenSkip", 0.5)]
    assert (half.median_cot_tokens, half.n_capped, half.ratio_vs_original, half.ratio_vs_self) == (None,) * 4
    assert half.latency_basis == "batch"
    [summary] = table.adherence
    assert summary.basis == "original-means" and summary.mean_abs_error == pytest.approx(abs(160 / 300 - 0.5))
    markdown = (tmp_path / "results.md").read_text()
    assert "| TokenSkip | 0.5 | 160.0 | – | – | – | – | – | – | – |" in markdown
    assert "| TokenSkip | vs original, all questions | 0.033 | 0.5 | yes | 0 of 1 pairs |" in markdown
    assert (tmp_path / "results_adherence.png").is_file()

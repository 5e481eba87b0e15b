"""The paper's numbers beside a user's: which tables match which runs, and that the figures typed in
from the paper agree with themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenskip.reporting.published import RATIO_BASIS, TABLES, find_table, model_key
from tokenskip.stages import report


def put(root: Path, relative: str, **metrics) -> None:
    path = root / relative / "samples" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


@pytest.mark.parametrize("table", TABLES, ids=lambda table: f"{table.model}-{table.benchmark}")
def test_each_published_ratio_is_its_tokens_over_its_basis(table):
    """A typo in a copied number shows: the paper's ActRatio is its CoT tokens / its basis run's (RATIO_BASIS), to
    two decimals, rounded half up."""
    original = table.find("original", 1.0)
    assert original is not None and original.actual_ratio is None
    for row in table.rows:
        if row.method != "original":
            basis = table.find(row.method, 1.0) if RATIO_BASIS[row.method] == "self" else original
            assert row.actual_ratio == pytest.approx(row.cot_tokens / basis.cot_tokens, abs=0.0051), row
            assert 0 < row.accuracy <= 100


def test_model_names_match_across_spellings():
    assert model_key("meta-llama/Meta-Llama-3.1-8B-Instruct") == model_key("Llama-3.1-8B-Instruct")
    assert find_table(["/data/models/Qwen2.5-7B-Instruct/"], "gsm8k").model == "Qwen2.5-7B-Instruct"
    assert find_table(["Qwen/Qwen2.5-7B-Instruct"], "math") is None  # the paper reports Qwen on GSM8K only
    assert find_table(["meta-llama/Llama-3.1-8B-Instruct"], "math").source == "Table 1"
    assert find_table(["SmolLM2-135M-Instruct"], "gsm8k") is None


def test_report_puts_the_paper_beside_a_reproduction(tmp_path):
    group = tmp_path / "runs" / "gsm8k" / "7b"
    common = dict(benchmark="gsm8k", data_type="test", model_path="/models/Qwen2.5-7B-Instruct",
                  decoding={"max_new_tokens": 512})
    put(group, "Original/test", method="original", compression_ratio=1.0, n_samples=1319, accuracy=0.90,
        avg_cot_length=300.0, sample_latency=2.0, **common)
    put(group, "TokenSkip/1.0", method="tokenskip", compression_ratio=1.0, n_samples=1319, accuracy=0.90,
        avg_cot_length=320.0, sample_latency=2.0, **common)
    put(group, "TokenSkip/0.5", method="tokenskip", compression_ratio=0.5, n_samples=1319, accuracy=0.85,
        avg_cot_length=160.0, sample_latency=1.0, **common)
    put(group, "TokenSkip/0.4", method="tokenskip", compression_ratio=0.4, n_samples=1319, accuracy=0.80,
        avg_cot_length=140.0, sample_latency=1.0, **common)
    tables = report.main([str(tmp_path / "runs")])
    paper = tables[0].paper
    assert paper is not None and paper.model == "Qwen2.5-7B-Instruct" and "Table 2" in paper.source
    by_ratio = {(row.method, row.ratio): row for row in paper.rows}
    assert set(by_ratio) == {("Original", 1.0), ("TokenSkip", 1.0), ("TokenSkip", 0.5)}  # the paper has no γ 0.4
    half = by_ratio[("TokenSkip", 0.5)]
    assert (half.paper_accuracy, half.paper_cot_tokens, half.paper_actual_ratio) == (86.0, 151.44, 0.51)
    assert paper.differences() == []
    markdown = (tmp_path / "runs" / "results.md").read_text()
    # the ratio against the adapter's own γ = 1.0 run (160 / 320), as the paper's, not the original's (160 / 300)
    assert half.actual_ratio == pytest.approx(0.5)
    assert "| TokenSkip | 0.5 | 86.0% | 85.0% | -1.0 | 151.4 | 160.0 | +8.6 | 0.51 | 0.50 | -0.01 |" in markdown
    assert "Same number of test questions (1319) and token cap (512) as the paper." in markdown
    listed = json.loads(json.dumps(report.as_json(tables[0])))
    assert [row["paper_accuracy"] for row in listed["paper"]["rows"]] == [91.4, 91.7, 86.0]


def test_a_smaller_run_is_said_not_to_be_a_reproduction(tmp_path):
    group = tmp_path / "Llama-3.1-8B-Instruct" / "math" / "8b"  # the original layout: the model is a folder
    put(group, "Original/test", n_samples=50, accuracy=0.5, avg_cot_length=400.0, sample_latency=2.0)
    put(group, "Truncation/0.5", n_samples=50, accuracy=0.3, avg_cot_length=200.0, sample_latency=1.0)
    tables = report.main([str(tmp_path)])
    paper = tables[0].paper
    assert [(row.method, row.ratio, row.paper_accuracy) for row in paper.rows] == [
        ("Original", 1.0, 48.6), ("Truncation", 0.5, 27.4)]
    assert paper.differences() == ["50 questions, the paper all 500"]
    assert "Not the paper's setting: 50 questions, the paper all 500" in (tmp_path / "results.md").read_text()


def test_no_section_for_a_model_the_paper_does_not_report(tmp_path):
    group = tmp_path / "SmolLM2-135M-Instruct" / "gsm8k" / "135m"
    put(group, "Original/test", n_samples=10, accuracy=0.1, avg_cot_length=100.0, sample_latency=1.0)
    tables = report.main([str(tmp_path)])
    assert tables[0].paper is None
    assert "Beside the paper" not in (tmp_path / "results.md").read_text()


def test_the_readme_shows_the_published_table():
    """The README's comparison table is published.py's, so a corrected number cannot leave a stale copy."""
    from conftest import ROOT

    from tokenskip.reporting.published import markdown

    assert markdown("Qwen2.5-7B-Instruct", "gsm8k") in (ROOT / "README.md").read_text(encoding="utf-8")

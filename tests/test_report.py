"""report.py on a hand-made outputs tree: numbers computed from the metrics, a valid PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip import report
from tokenskip.errors import UsageError


def put(root: Path, relative: str, **metrics) -> None:
    path = root / relative / "samples" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


@pytest.fixture()
def tree(tmp_path) -> Path:
    """An original-script tree (only the original four metrics) and one written by this toolkit."""
    old = tmp_path / "Qwen2.5-7B-Instruct" / "gsm8k" / "7b"
    put(old, "Original/test", n_samples=100, accuracy=0.86, avg_cot_length=300.0, sample_latency=2.0)
    put(old, "Original/train", n_samples=100, accuracy=0.9, avg_cot_length=310.0, sample_latency=2.0)
    put(old, "TokenSkip/0.5", n_samples=100, accuracy=0.80, avg_cot_length=160.0, sample_latency=1.0)
    put(old, "TokenSkip/0.9", n_samples=100, accuracy=0.85, avg_cot_length=270.0, sample_latency=1.8)
    new = tmp_path / "smol" / "math" / "135m"
    common = dict(n_samples=10, benchmark="math", data_type="test")
    put(new, "Original/test", method="original", compression_ratio=1.0, accuracy=0.2, avg_cot_length=100.0,
        sample_latency=0.5, **common)
    put(new, "Truncation/0.5", method="truncation", compression_ratio=0.5, accuracy=0.1, avg_cot_length=50.0,
        sample_latency=0.25, **common)
    put(new, "TokenSkip/0.5", method="tokenskip", label="TokenSkip-CTS", compression_ratio=0.5, accuracy=0.2,
        avg_cot_length=40.0, sample_latency=0.2, **common)
    return tmp_path


def rows_by(tables, title_part):
    table = next(t for t in tables if title_part in t.title)
    return table, {(row.method, row.ratio): row for row in table.rows}


def test_rows_are_computed_from_the_metrics(tree):
    tables = report.main([str(tree)])
    table, rows = rows_by(tables, "Qwen2.5-7B-Instruct")
    assert table.benchmark == "gsm8k" and len(rows) == 3  # the train-split run is left out
    half = rows[("TokenSkip", 0.5)]
    assert half.actual_ratio == pytest.approx(160 / 300)
    assert half.accuracy_change == pytest.approx(80 - 86)
    assert half.speedup == pytest.approx(2.0)
    table, rows = rows_by(tables, "smol")
    assert table.benchmark == "math"
    assert rows[("TokenSkip-CTS", 0.5)].actual_ratio == pytest.approx(0.4)
    assert rows[("Truncation", 0.5)].speedup == pytest.approx(2.0)
    markdown = (tree / "results.md").read_text()
    assert "| TokenSkip | 0.5 | 80.0% | -6.0 | 160.0 | 0.53 | 1.000 | 2.00x | 100 |" in markdown
    assert "![accuracy vs CoT tokens](results.png)" in markdown


def test_plot_is_a_png_with_every_point(tree):
    from PIL import Image

    report.main([str(tree)])
    image = Image.open(tree / "results.png")
    assert image.format == "PNG" and image.size[0] > 600
    assert image.text[report.POINTS_KEY] == "6"  # 3 + 3 test-split runs


def test_json_format(tree):
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tree), "--format", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tables = json.loads(result.stdout)
    assert {table["benchmark"] for table in tables} == {"gsm8k", "math"}
    assert json.loads((tree / "results.json").read_text()) == tables


def test_an_empty_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="no metrics.json"):
        report.main([str(tmp_path)])


def test_runs_on_the_same_spot_share_one_label():
    def row(ratio, tokens, accuracy):
        return report.Row("TokenSkip", ratio, accuracy, None, tokens, None, None, None, 10, "")

    rows = [row(0.9, 51.4, 25.0), row(0.8, 51.4, 25.0), row(0.7, 50.6, 21.9), row(0.5, 100.0, 10.0)]
    spots = report.label_spots(rows, rows)
    assert [ratios for _, ratios in spots] == [["0.9", "0.8"], ["0.7"], ["0.5"]]
    assert spots[0][0] == (51.4, 25.0)

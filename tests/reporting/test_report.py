"""report.py on a hand-made outputs tree: numbers computed from the metrics, a valid PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.core.errors import UsageError
from tokenskip.reporting.plots import label_spots
from tokenskip.reporting.tables import POINTS_KEY, Row
from tokenskip.stages import report


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
    assert image.text[POINTS_KEY] == "6"  # 3 + 3 test-split runs


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
        return Row("TokenSkip", ratio, accuracy, None, tokens, None, None, None, 10, "")

    rows = [row(0.9, 51.4, 25.0), row(0.8, 51.4, 25.0), row(0.7, 50.6, 21.9), row(0.5, 100.0, 10.0)]
    spots = label_spots(rows, rows)
    assert [ratios for _, ratios in spots] == [["0.9", "0.8"], ["0.7"], ["0.5"]]
    assert spots[0][0] == (51.4, 25.0)


def interrupt(root: Path, relative: str, predictions: int, data_type: str = "test") -> None:
    """A run evaluation.py started and did not finish: settings and some predictions, no metrics.json."""
    folder = root / relative / "samples"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"data_type": data_type, "compression_ratio": 0.7}))
    lines = [json.dumps({"id": str(i)}) for i in range(predictions)]
    (folder / "predictions.jsonl").write_text("".join(line + "\n" for line in lines) + '{"id": "torn')


@pytest.fixture()
def interrupted(tree) -> Path:
    interrupt(tree / "Qwen2.5-7B-Instruct" / "gsm8k" / "7b", "TokenSkip/0.7", 3)
    interrupt(tree / "other" / "gsm8k" / "3b", "Original/test", 0)  # a group with no finished run
    interrupt(tree / "smol" / "math" / "135m", "TokenSkip/0.7/train", 5, data_type="train")  # not a table row
    return tree


def test_unfinished_runs_are_listed_after_the_tables(interrupted, capsys):
    tables = report.main([str(interrupted)])
    out = capsys.readouterr().out
    expected = ["unfinished runs (not in the tables):",
                "- Qwen2.5-7B-Instruct/gsm8k/7b/TokenSkip/0.7/samples (3 predictions)",
                "- other/gsm8k/3b/Original/test/samples (0 predictions)"]
    for text in (out, (interrupted / "results.md").read_text()):
        lines = text.splitlines()
        start = lines.index(expected[0])
        assert lines[start:start + 3] == expected
        assert all(line.startswith("## ") is False for line in lines[start:])  # after every table
        assert "train" not in "\n".join(lines[start:start + 3])
    _, rows = rows_by(tables, "Qwen2.5-7B-Instruct")
    assert len(rows) == 3  # the unfinished run is not a row


def test_unfinished_runs_in_json(interrupted):
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(interrupted), "--format", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tables = {table["title"]: table for table in json.loads(result.stdout)}
    assert tables["Qwen2.5-7B-Instruct / gsm8k / 7b"]["unfinished"] == [
        {"path": "Qwen2.5-7B-Instruct/gsm8k/7b/TokenSkip/0.7/samples", "predictions": 3}]
    assert tables["other / gsm8k / 3b"] == {"title": "other / gsm8k / 3b", "benchmark": "gsm8k", "rows": [],
                                            "original": None, "unfinished": [
                                                {"path": "other/gsm8k/3b/Original/test/samples", "predictions": 0}]}
    assert tables["smol / math / 135m"]["unfinished"] == []


def test_only_unfinished_runs_is_a_one_line_error_naming_them(tmp_path):
    interrupt(tmp_path / "7b", "TokenSkip/0.5", 2)
    pattern = r"no metrics.json under .*unfinished.*7b/TokenSkip/0.5/samples \(2 predictions\)"
    with pytest.raises(UsageError, match=pattern):
        report.main([str(tmp_path)])


def test_runs_are_placed_by_the_layout_module(tmp_path):
    """Old metrics (no method, no γ) under a γ-tagged base-model folder are the tag's row, not a second original."""
    put(tmp_path / "7b", "Original/test", n_samples=10, accuracy=0.5, avg_cot_length=100.0, sample_latency=1.0)
    put(tmp_path / "7b", "Original/test/ratio_0.5", n_samples=10, accuracy=0.4, avg_cot_length=80.0,
        sample_latency=1.0)
    [table] = report.main([str(tmp_path)])
    assert [(row.method, row.ratio) for row in table.rows] == [("Original", 1.0), ("Base model + γ tag", 0.5)]
    assert table.rows[1].accuracy_change == pytest.approx(-10.0)


def test_old_tree_gets_the_adherence_plot_and_latency_basis(tree):
    from PIL import Image

    tables = report.main([str(tree)])
    _, rows = rows_by(tables, "Qwen2.5-7B-Instruct")
    assert rows[("TokenSkip", 0.5)].latency_basis == "batch"  # no request_latency in old metrics
    assert rows[("TokenSkip", 0.5)].ratio_vs_self is None  # no predictions.jsonl to pair questions on
    # on the means' ratio: TokenSkip 0.9 and 0.5 of the old tree, Truncation and TokenSkip-CTS at 0.5 of the new
    assert Image.open(tree / "results_adherence.png").text[POINTS_KEY] == "4"
    assert "![actual vs target ratio](results_adherence.png)" in (tree / "results.md").read_text()


def test_a_table_whose_gamma_rows_come_from_different_adapters_is_marked(tmp_path):
    root = tmp_path / "m" / "gsm8k" / "7b"
    common = dict(n_samples=10, benchmark="gsm8k", data_type="test", sample_latency=1.0)
    put(root, "Original/test", method="original", compression_ratio=1.0, accuracy=0.5, avg_cot_length=100.0,
        **common)
    for ratio, sha, path in (("1.0", "a" * 64, "outputs/adapters/mine"), ("0.9", "a" * 64, "outputs/adapters/mine"),
                             ("0.5", "b" * 64, "models/released/TokenSkip-Qwen2.5-7B-Instruct-GSM8K")):
        put(root, f"TokenSkip/{ratio}", method="tokenskip", compression_ratio=float(ratio), accuracy=0.5,
            avg_cot_length=80.0, adapter_sha256=sha, adapter_path=path, **common)
    [table] = report.main([str(tmp_path)])
    assert list(table.mixed_adapters()) == ["TokenSkip"]
    markdown = (tmp_path / "results.md").read_text()
    assert ("**Warning: the rows of TokenSkip come from 2 different adapters** (γ 1, 0.9 from outputs/adapters/mine "
            "(sha256 aaaaaaaaaaaa); γ 0.5 from models/released/TokenSkip-Qwen2.5-7B-Instruct-GSM8K "
            "(sha256 bbbbbbbbbbbb))") in markdown
    # one adapter at every γ: no warning
    put(root, "TokenSkip/0.7", method="tokenskip", compression_ratio=0.7, accuracy=0.5, avg_cot_length=80.0,
        adapter_sha256="a" * 64, adapter_path="outputs/adapters/mine", **common)
    (root / "TokenSkip" / "0.5" / "samples" / "metrics.json").unlink()
    (root / "TokenSkip" / "0.5" / "samples").rmdir()
    [table] = report.main([str(tmp_path)])
    assert table.mixed_adapters() == {} and "Warning" not in (tmp_path / "results.md").read_text()

"""Stage 2 in shards (--num-shards / --shard-index / --merge-shards): the merged files are exactly
those of one process, for LLMLingua-2, NER and CTS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit.classifiers import sample_cots, tiny_classifier
from tokenskip.core import layout
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.stages import cts as cts_stage
from tokenskip.stages import lingua as lingua_stage

RATIOS = ("0.9", "0.7", "0.5")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return tiny_classifier(tmp_path_factory.mktemp("lingua"), "xlm-roberta")


def write_stage1(model_folder: Path, tiny_lm_dir: Path, n: int = 13) -> Path:
    """A stage-1 folder of n answers, every fifth one wrong."""
    samples = layout.stage1_samples(model_folder)
    samples.mkdir(parents=True)
    records = [{"id": f"gsm8k-train-{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                                       {"role": "assistant", "content": ""}],
                "answer": "72", "prompt": f"<prompt {i}>",
                "model_output": f"{text}\n\nThe final answer is: $\\boxed{{72}}$", "prediction": "72",
                "cot_length": 50, "accuracy": i % 5 != 1} for i, text in enumerate(sample_cots(n))]
    (samples / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / "metrics.json").write_text(json.dumps({"model_path": str(tiny_lm_dir), "model_type": "llama3"}))
    return samples / "predictions.jsonl"


def stage_files(model_folder: Path, method_folder: str) -> dict[str, bytes]:
    """Every file stage 2 writes, by name (shard folders aside)."""
    samples = layout.stage1_samples(model_folder)
    files = {name: (samples / name).read_bytes() for name in (layout.CORRECT, layout.FORMATTED)}
    out = model_folder / method_folder
    files.update({path.name: path.read_bytes() for path in out.iterdir() if path.is_file() and path.suffix in
                  (".json", ".jsonl")})
    return files


def lingua_args(model_folder, classifier, method_main, *extra):
    return method_main(["--input-dir", str(model_folder), "--llmlingua-path", str(classifier), "--ratios", *RATIOS,
                        *extra])


@pytest.mark.parametrize("method, folder", [("llmlingua2", "Compression"), ("ner", "NER_Enhanced_Compression")])
def test_lingua_shards_merge_to_the_unsharded_files(classifier, tiny_lm_dir, tmp_path, method, folder):
    main = lingua_stage.llmlingua_main if method == "llmlingua2" else lingua_stage.ner_main
    single, sharded = tmp_path / "single" / "7b", tmp_path / "sharded" / "7b"
    write_stage1(single, tiny_lm_dir)
    write_stage1(sharded, tiny_lm_dir)
    expected = lingua_args(single, classifier, main)
    for index in (2, 0, 1):  # any order
        record = lingua_args(sharded, classifier, main, "--num-shards", "3", "--shard-index", str(index))
        assert len(record["ids"]) in (3, 4)
    assert not (sharded / folder / "compression_summary.json").exists()  # shards write only their folders
    merged = lingua_args(sharded, classifier, main, "--num-shards", "3", "--merge-shards")
    assert merged == expected
    assert stage_files(sharded, folder) == stage_files(single, folder)
    assert set(expected["ratios"]["0.5"]) > {"mean_actual_ratio", "mean_cl100k_ratio"}


def test_cts_shards_merge_to_the_unsharded_files(tiny_lm_dir, tmp_path):
    single, sharded = tmp_path / "single" / "7b", tmp_path / "sharded" / "7b"

    def run(model_folder, *extra):
        predictions = layout.stage1_predictions(model_folder)
        return cts_stage.main(["--input_data", str(predictions), "--reference_model", str(tiny_lm_dir),
                               "--device", "cpu", "--ratios", *RATIOS, "--batch-size", "2", *extra])

    write_stage1(single, tiny_lm_dir, n=7)
    write_stage1(sharded, tiny_lm_dir, n=7)
    expected = run(single)
    for index in (0, 1):
        run(sharded, "--num-shards", "2", "--shard-index", str(index))
    assert run(sharded, "--num-shards", "2", "--merge-shards") == expected
    assert stage_files(sharded, "CTS_Compression") == stage_files(single, "CTS_Compression")


def test_a_missing_changed_or_running_shard_stops_the_merge(classifier, tiny_lm_dir, tmp_path):
    model = tmp_path / "7b"
    write_stage1(model, tiny_lm_dir)
    main = lingua_stage.llmlingua_main
    lingua_args(model, classifier, main, "--num-shards", "2", "--shard-index", "0")
    with pytest.raises(UsageError, match=r"shard 1 of 2 is missing .*--shard-index 1"):
        lingua_args(model, classifier, main, "--num-shards", "2", "--merge-shards")
    lingua_args(model, classifier, main, "--num-shards", "2", "--shard-index", "1", "--max-cot-tokens", "400")
    with pytest.raises(UsageError, match=r"shard 1 of 2 .* made otherwise .*call.*max_cot_tokens"):
        lingua_args(model, classifier, main, "--num-shards", "2", "--merge-shards")
    # a killed shard (no shard.json) is unfinished; rerun alone, it is merged
    shard_1 = model / "Compression" / "shards" / "1-of-2"
    (shard_1 / "shard.json").unlink()
    with pytest.raises(UsageError, match=r"shard 1 of 2 is unfinished"):
        lingua_args(model, classifier, main, "--num-shards", "2", "--merge-shards")
    lingua_args(model, classifier, main, "--num-shards", "2", "--shard-index", "1")
    with FolderLock(shard_1), pytest.raises(UsageError, match="in use"):
        lingua_args(model, classifier, main, "--num-shards", "2", "--merge-shards")
    assert not (model / "Compression" / "compression_summary.json").exists()
    assert not (layout.stage1_samples(model) / layout.FORMATTED).exists()
    summary = lingua_args(model, classifier, main, "--num-shards", "2", "--merge-shards")
    assert summary["n_compressed"] == 10


def test_a_finished_shard_is_not_redone(classifier, tiny_lm_dir, tmp_path, capsys):
    model = tmp_path / "7b"
    write_stage1(model, tiny_lm_dir)
    args = ("--num-shards", "2", "--shard-index", "0")
    lingua_args(model, classifier, lingua_stage.llmlingua_main, *args)
    capsys.readouterr()
    lingua_args(model, classifier, lingua_stage.llmlingua_main, *args)
    assert "shard 0 of 2 is already done" in capsys.readouterr().out


def test_more_shards_than_cots_leaves_empty_shards_that_merge(classifier, tiny_lm_dir, tmp_path):
    single, sharded = tmp_path / "single" / "7b", tmp_path / "sharded" / "7b"
    for folder in (single, sharded):
        write_stage1(folder, tiny_lm_dir, n=3)
    expected = lingua_args(single, classifier, lingua_stage.llmlingua_main)
    for index in range(4):
        lingua_args(sharded, classifier, lingua_stage.llmlingua_main, "--num-shards", "4", "--shard-index",
                    str(index))
    assert lingua_args(sharded, classifier, lingua_stage.llmlingua_main, "--num-shards", "4",
                       "--merge-shards") == expected
    assert stage_files(sharded, "Compression") == stage_files(single, "Compression")

"""Stage 2 must never lose good outputs, must say why it found nothing, and must leave one writer per folder.

Also: the CoT it trains on states the answer once, every path comes from tokenskip.core.layout, every
scorer is found whatever was imported first, and scorers keep no state from one call to the next.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tokenskip.compression import driver
from tokenskip.compression.scorers import CoT
from tokenskip.core import layout
from tokenskip.core.cli import run_cli
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.core.ratios import DEFAULT_RATIOS
from tokenskip.prompting.prompts import ANSWER_MARKER
from tokenskip.stages import cts as cts_stage
from tokenskip.stages import llamafactory

QUESTION = "Natalia sold clips to 48 of her friends in April, and half as many in May. How many in all?"
REASONING = [
    "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.",
    "Weng earns 12/60 = $0.2 per minute.\n\nWorking 50 minutes, she earned 0.2 x 50 = $10.",
    "Tom has 3 x 5 = 15 apples.\nAfter eating 2 apples, 15 - 2 = 13 apples are left.",
]
ANSWERS = ["72", "10", "13"]


def write_stage1(root: Path, model_dir: Path, *, correct: bool = True) -> Path:
    """A stage-1 run in the outputs layout: three answers (correct unless told), one wrong."""
    model_folder = root / "tiny" / "gsm8k" / "135m"
    predictions = layout.stage1_predictions(model_folder)
    predictions.parent.mkdir(parents=True)
    records = [{"id": f"gsm8k-train-{i}",
                "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ""}],
                "answer": answer, "prompt": "<prompt>", "model_output": f"{text}{ANSWER_MARKER} $\\boxed{{{answer}}}$",
                "prediction": answer, "cot_length": 20, "accuracy": correct}
               for i, (text, answer) in enumerate(zip(REASONING, ANSWERS))]
    records.append({**records[0], "id": "gsm8k-train-3", "prediction": "1", "accuracy": False})
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    (predictions.parent / layout.METRICS).write_text(json.dumps({"model_path": str(model_dir)}))
    return predictions


def cts_args(predictions: Path, model_dir: Path, *extra: str) -> list[str]:
    return ["--input_data", str(predictions), "--reference_model", str(model_dir), "--device", "cpu", *extra]


def stage_outputs(predictions: Path) -> list[Path]:
    """Every file the CTS stage writes for this input, in the layout's default places."""
    out = cts_stage.default_output_folder(predictions)
    return [predictions.with_name(layout.CORRECT), predictions.with_name(layout.FORMATTED),
            out / layout.COMPRESSION_SUMMARY, *(layout.ratio_file(out, r) for r in DEFAULT_RATIOS)]


def one_line_error(main, argv, capsys) -> str:
    capsys.readouterr()  # what earlier runs printed
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    return lines[0]


# --- 1. a failed rerun loses nothing ---

def test_failed_rerun_keeps_every_previous_output(tiny_lm_dir, tmp_path, capsys):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    cts_stage.main(cts_args(predictions, tiny_lm_dir))
    before = {path: path.read_bytes() for path in stage_outputs(predictions)}
    assert all(before.values())
    error = one_line_error(cts_stage.main, cts_args(predictions, tiny_lm_dir, "--max-cot-tokens", "1"), capsys)
    assert "dropped" in error
    assert {path: path.read_bytes() for path in stage_outputs(predictions)} == before


# --- 2. nothing to compress: no empty files, and the real reason ---

def test_no_correct_answer_writes_nothing_and_says_so(tiny_lm_dir, tmp_path, capsys):
    predictions = write_stage1(tmp_path, tiny_lm_dir, correct=False)
    error = one_line_error(cts_stage.main, cts_args(predictions, tiny_lm_dir), capsys)
    assert "0 of 4 stage-1 answers are correct" in error
    assert not [path for path in stage_outputs(predictions) if path.exists()]


def test_all_cots_dropped_names_the_reasons_and_writes_nothing(tiny_lm_dir, tmp_path, capsys):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    error = one_line_error(cts_stage.main, cts_args(predictions, tiny_lm_dir, "--max-cot-tokens", "1"), capsys)
    assert "all 3 correct CoTs dropped" in error and "3 longer than 1 tokens" in error
    assert "--max-cot-tokens" in error
    assert not [path for path in stage_outputs(predictions) if path.exists()]


# --- 3. the training data states the answer once ---

@pytest.mark.parametrize("ending", ["", ".", "  \n", ".\n"])
def test_qwen_cot_drops_a_trailing_final_answer_sentence(ending):
    output = f"Step 1: 48/2 = 24.\nStep 2: 48 + 24 = 72.{ANSWER_MARKER} $\\boxed{{72}}${ending}"
    assert driver.extract_cot(output, "qwen") == ("Step 1: 48/2 = 24.\nStep 2: 48 + 24 = 72.", "kept")
    nested = f"Half of it is \\frac{{1}}{{2}}.{ANSWER_MARKER} $\\boxed{{\\frac{{1}}{{2}}}}${ending}"
    assert driver.extract_cot(nested, "qwen") == ("Half of it is \\frac{1}{2}.", "kept")


@pytest.mark.parametrize("output", [
    "48 + 24 = 72, so the answer is $\\boxed{72}$.",  # its own final sentence, no marker: kept whole
    f"48 + 24 = 72.{ANSWER_MARKER} $\\boxed{{72}}$, and then we double-check it.",  # not at the end
    f"48 + 24 = 72.{ANSWER_MARKER} 72",  # no boxed answer after the marker
])
def test_qwen_cot_keeps_the_whole_output_otherwise(output):
    assert driver.extract_cot(output, "qwen") == (output, "kept")


def test_qwen_output_that_is_only_the_answer_sentence_is_dropped():
    assert driver.extract_cot(f"{ANSWER_MARKER.strip()} $\\boxed{{72}}$", "qwen")[0] is None


def test_training_record_states_the_answer_once(tiny_lm_dir, tmp_path):
    predictions = write_stage1(tmp_path, tiny_lm_dir)
    cts_stage.main(cts_args(predictions, tiny_lm_dir, "--compression_ratio", "0.5"))
    formatted = [json.loads(line) for line in predictions.with_name(layout.FORMATTED).read_text().splitlines()]
    assert [record["cot"] for record in formatted] == REASONING
    for record in formatted:
        output = llamafactory.training_record(QUESTION, record["cot"], record["answer"], 1.0, "qwen")["output"]
        assert output.count(ANSWER_MARKER) == 1 and output.count("\\boxed") == 1


# --- 4. one writer per folder ---

@pytest.mark.parametrize("held", ["output folder", "stage-1 samples folder"])
def test_a_held_folder_stops_the_stage_before_it_writes(held, tiny_lm_dir, tmp_path, capsys):
    import os

    predictions = write_stage1(tmp_path, tiny_lm_dir)
    folder = cts_stage.default_output_folder(predictions) if held == "output folder" else predictions.parent
    with FolderLock(folder):
        error = one_line_error(cts_stage.main, cts_args(predictions, tiny_lm_dir), capsys)
    assert "in use by another run" in error and f"pid {os.getpid()}" in error
    assert not [path for path in stage_outputs(predictions) if path.exists()]


# --- 5. every path from tokenskip.core.layout ---

STAGE2_SOURCES = ["tokenskip/compression/driver.py", "tokenskip/stages/lingua.py", "tokenskip/stages/cts.py",
                  *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tokenskip" / "scorers").glob("*.py"))]
LAYOUT_NAMES = {layout.CORRECT, layout.FORMATTED, layout.COMPRESSION_SUMMARY, layout.RATIO_FILE_STEM,
                layout.PREDICTIONS, layout.METRICS, layout.SAMPLES, *layout.RUN_FOLDERS.values(),
                *layout.COMPRESSION_FOLDERS.values()}


@pytest.mark.parametrize("source", STAGE2_SOURCES)
def test_stage2_spells_no_path_of_the_layout_itself(source):
    """File and folder names come from tokenskip.core.layout: no string literal of the code is one of them
    (help texts and messages that mention them in prose are fine)."""
    import ast

    tree = ast.parse((ROOT / source).read_text())
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & LAYOUT_NAMES


def test_output_folders_come_from_the_layout():
    from tokenskip.compression.scorers import SCORERS, scorer_class

    assert sorted(SCORERS) == sorted(layout.COMPRESSION_FOLDERS)
    for name in SCORERS:
        assert scorer_class(name).output_folder == layout.COMPRESSION_FOLDERS[name]
    model_folder = Path("out") / "7b"
    assert (cts_stage.default_output_folder(layout.stage1_predictions(model_folder))
            == layout.compression_dir(model_folder, "cts"))


# --- 6. every scorer is found whatever was imported first ---

@pytest.mark.parametrize("first", ["cts", "ner", "llmlingua2"])
def test_importing_one_scorer_first_hides_no_other(first):
    code = (f"import tokenskip.compression.scorers.{first}\n"
            "from tokenskip.compression.scorers import scorer_class\n"
            "print(' '.join(scorer_class(n).__name__ for n in ('llmlingua2', 'ner', 'cts')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LLMLingua2Scorer", "NERScorer", "CTSScorer"]


def test_unknown_method_lists_every_method():
    from tokenskip.compression.scorers import scorer_class

    with pytest.raises(UsageError, match="choose from cts, cts_authors, llmlingua2, ner"):
        scorer_class("nope")


# --- 7. score once, select per ratio, no state between calls ---

def test_cts_select_per_ratio_equals_compress(tiny_lm_dir):
    from tokenskip.compression.scorers.cts import CTSScorer

    scorer = CTSScorer(tiny_lm_dir, device="cpu", progress=False)
    cots = [CoT(text, QUESTION, answer) for text, answer in zip(REASONING, ANSWERS)]
    attributes = set(vars(scorer))
    compressed = scorer.compress(cots, DEFAULT_RATIOS)
    assert [{r: scorer.select(s, r) for r in DEFAULT_RATIOS} for s in scorer.score(cots)] == compressed
    assert set(vars(scorer)) == attributes


def test_ratios_are_checked_once_before_any_scoring(tiny_lm_dir, monkeypatch):
    from tokenskip.compression.scorers.cts import CTSScorer

    scorer = CTSScorer(tiny_lm_dir, device="cpu", progress=False)
    monkeypatch.setattr(scorer, "score", lambda cots: pytest.fail("scored before the ratios were checked"))
    with pytest.raises(UsageError, match=r"got 1.5"):
        scorer.compress([CoT(REASONING[0], QUESTION, "72")], [0.5, 1.5])


@pytest.fixture(scope="module")
def ner_scorer(tmp_path_factory):
    from testkit.classifiers import FOLDER_NAMES, TINY, build_classifier, tokenizer_training_texts
    from tokenskip.compression.scorers.ner import NERScorer

    folder = tmp_path_factory.mktemp("ner") / FOLDER_NAMES["xlm-roberta"]
    return NERScorer(build_classifier(folder, "xlm-roberta", tokenizer_training_texts(), vocab_size=1000, **TINY),
                     progress=False)


def test_ner_report_depends_only_on_its_arguments(ner_scorer):
    ratios = [0.9, 0.5]
    batch_a = [CoT("Step 1: Natalia sold 48/2 = 24 clips in May. Therefore she sold 72 in all.")]
    batch_b = [CoT(text) for text in REASONING[1:]] + [CoT("So Julie read 12 x 2 = 24 pages today, because 12 + 12 "
                                                           "= 24. Finally, 120 - 36 = 84 pages are left.")]
    scored_b = ner_scorer.score(batch_b)
    compressed_b = ner_scorer.compress(batch_b, ratios)
    expected = ner_scorer.ratio_report(batch_b, compressed_b, scored_b)
    attributes = set(vars(ner_scorer))
    ner_scorer.compress(batch_a, ratios)
    assert set(vars(ner_scorer)) == attributes
    # the two-argument form scores the CoTs it is given, never those of an earlier call
    assert ner_scorer.ratio_report(batch_b, compressed_b) == expected
    assert [{r: ner_scorer.select(s, r) for r in ratios} for s in scored_b] == compressed_b
    entities = sum(len(s.entity_words) for s in scored_b)
    for ratio in ratios:
        kept = expected[ratio]["entity_preservation"] * entities
        assert abs(kept - round(kept)) < 1e-9  # a share of batch B's entities, not batch A's


# --- 8. a relative model path recorded by stage 1 is never taken for a hub id ---

def write_metrics(folder: Path, model_path: str) -> Path:
    predictions = layout.stage1_predictions(folder)
    predictions.parent.mkdir(parents=True)
    predictions.write_text("")
    (predictions.parent / layout.METRICS).write_text(json.dumps({"model_path": model_path}))
    return predictions


def test_recorded_relative_model_folder_missing_from_here_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    predictions = write_metrics(tmp_path / "run", "models/SmolLM2-135M-Instruct")
    with pytest.raises(UsageError) as error:
        driver.target_tokenizer_path(predictions, None)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert re.search(r"models/SmolLM2-135M-Instruct.*not found from here.*--tokenizer-path", message), message
    (tmp_path / "models" / "SmolLM2-135M-Instruct").mkdir(parents=True)
    assert driver.target_tokenizer_path(predictions, None) == "models/SmolLM2-135M-Instruct"


def test_recorded_absolute_model_folder_missing_is_one_line(tmp_path):
    predictions = write_metrics(tmp_path / "run", str(tmp_path / "gone" / "model"))
    with pytest.raises(UsageError, match=r"gone/model.*not found.*--tokenizer-path"):
        driver.target_tokenizer_path(predictions, None)


def test_recorded_hub_model_in_the_local_cache_is_used(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--Qwen--Qwen2.5-7B-Instruct" / "refs").mkdir()
    (cache / "models--Qwen--Qwen2.5-7B-Instruct" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    predictions = write_metrics(tmp_path / "run", "Qwen/Qwen2.5-7B-Instruct")
    assert driver.target_tokenizer_path(predictions, None) == "Qwen/Qwen2.5-7B-Instruct"


# --- 9. product code names no path of one machine ---

@pytest.mark.parametrize("source", STAGE2_SOURCES)
def test_no_machine_specific_path_in_stage2_code(source):
    code = (ROOT / source).read_text()
    assert not re.findall(r"/(?:tmp|home|work|Users)/|notes/", code)


def test_sampled_cots_keep_the_distinct_correct_ones(tmp_path):
    """Stage 1 with --n_samples k: each sample is a record; stage 2 keeps the correct samples whose
    CoTs differ, so a question answered the same way twice trains once."""
    def sample(question_id, j, output, correct):
        return {"id": f"{question_id}/{j}", "question_id": question_id, "sample": j, "accuracy": correct,
                "model_output": output, "prediction": "4", "messages": [{"role": "user", "content": question_id}]}

    records = [sample("q1", 0, "2+2=4. \\boxed{4}", True), sample("q1", 1, "2+2=4. \\boxed{4}", True),
               sample("q1", 2, "Two and two make 4. \\boxed{4}", True), sample("q1", 3, "5. \\boxed{5}", False),
               sample("q2", 0, "2+2=4. \\boxed{4}", True)]  # the same text for another question is kept
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    prepared = driver.prepare(path, model_type="qwen", max_cot_tokens=100, count_tokens=lambda text: len(text))
    assert [r["id"] for r in prepared.records] == ["q1/0", "q1/2", "q2/0"]
    assert prepared.dropped == {"same CoT as another sample of its question": 1}

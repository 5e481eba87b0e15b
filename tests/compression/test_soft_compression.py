"""Soft compression (soft_compress.py, tokenskip/compression/soft.py) on tiny random Llamas.

What is checked: the memory-token injection (shapes, masks, positions: a request fed as embeddings
generates exactly what its token ids generate), the compressor being the generator's first N
layers, save/load round trips, training steps and their resume, evaluation's metrics in
report.py's format, and one-line errors for bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402

from tokenskip.compression.soft.items import Item, answer_of, blocks_of, load_items, request_pieces, soft_positions  # noqa: E402
from tokenskip.compression.soft.model import SoftModel, _decoder_layers, generate_answers, left_pad  # noqa: E402
from tokenskip.compression.soft.settings import (  # noqa: E402
    BOXED_CUE,
    CHECKPOINT,
    COMPRESSOR_DIR,
    GENERATOR_ADAPTER_DIR,
    METRICS_KIND,
    SETTINGS_FILE,
    TEACHER_FILE,
    THINK_CLOSE_CUE,
    TRAIN_LOG,
    SoftSettings,
)
from tokenskip.compression.soft.train import target_ids  # noqa: E402
from tokenskip.core.errors import UsageError  # noqa: E402
from tokenskip.stages import soft as soft_stage  # noqa: E402

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "Tom has 3 + 4 = 7 apples.", "7"),
    ("A box holds 12 pens. How many pens are in 2 boxes?", "Two boxes hold 2 * 12 = 24 pens.", "24"),
    ("Sara reads 5 pages a day for 6 days. How many pages?", "She reads 5 * 6 = 30 pages in all.", "30"),
    ("There are 10 birds and 4 fly away. How many are left?", "10 - 4 = 6 birds are left on the tree.", "6"),
]


def settings_for(model_dir: Path, **overrides) -> SoftSettings:
    values = dict(base_model=str(model_dir), n_layers=1, mem_tokens=2, block_size=8, prompt_format="chat",
                  lora_r=4, lora_alpha=8)
    values.update(overrides)
    return SoftSettings(**values)


def items() -> list[Item]:
    return [Item(id=str(i), question=q, context=c, answer=a) for i, (q, c, a) in enumerate(QUESTIONS)]


def write_cots(path: Path, *, hard: bool = False) -> Path:
    with path.open("w") as handle:
        for i, (q, c, a) in enumerate(QUESTIONS):
            record = {"id": f"q{i}", "question": q, "cot": c, "answer": a}
            if hard:
                record["compressed_cot"] = " ".join(c.split()[::2])
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def model(tiny_lm_dir) -> SoftModel:
    return SoftModel.create(settings_for(tiny_lm_dir), device="cpu", dtype=torch.float32, seed=0)


# ---------------------------------------------------------------- counting and padding


def test_memory_counts_follow_the_block_rate():
    settings = SoftSettings(base_model="x", mem_tokens=8, block_size=128)
    assert settings.memory_count(128) == 8
    assert settings.memory_count(64) == 4
    assert settings.memory_count(1) == 1  # never zero
    assert soft_positions(128 * 3 + 17, settings) == 3 * 8 + 2
    assert soft_positions(0, settings) == 0
    assert [len(block) for block in blocks_of(list(range(300)), settings)] == [128, 128, 44]


def test_left_pad_masks_and_positions():
    rows = [torch.ones(3, 4), torch.full((5, 4), 2.0)]
    labels_in = [[-100, -100, 9], [-100] * 4 + [8]]
    embeds, mask, positions, labels = left_pad(rows, torch.zeros(1, 4), with_labels=labels_in)
    assert embeds.shape == (2, 5, 4)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert labels.tolist() == [[-100, -100, -100, -100, 9], [-100, -100, -100, -100, 8]]
    assert torch.equal(embeds[0, :2], torch.zeros(2, 4)) and torch.equal(embeds[0, 2:], torch.ones(3, 4))


# ---------------------------------------------------------------- the injection


def test_soft_request_replaces_the_context_by_its_memory_embeddings(model):
    item = items()[0]
    pieces = request_pieces(model.tokenizer, item, model.settings, item.context)
    assert len(pieces.context) > model.settings.block_size  # more than one block
    soft = model.compress([pieces])[0]
    expected = soft_positions(len(pieces.context), model.settings)
    assert soft.inputs.shape == (expected, model.generator.config.hidden_size) and soft.states is None
    row = model.request_embeddings(pieces, soft)
    assert row.embeds.shape[0] == len(pieces.prefix) + expected + len(pieces.cue)
    assert row.offset == len(pieces.prefix)
    assert torch.equal(row.embeds[: len(pieces.prefix)], model.embed(pieces.prefix))
    assert torch.equal(row.embeds[len(pieces.prefix): len(pieces.prefix) + expected], soft.inputs)
    # through the output map: (states - centre) * gain, the identity before calibration
    hidden = model.scale.shape[1]
    assert torch.equal(model.scale.detach(), torch.stack([torch.zeros(hidden), torch.ones(hidden)]))
    text = model.request_embeddings(pieces)
    assert text.embeds.shape[0] == len(pieces.prefix) + len(pieces.context) + len(pieces.cue)
    alone = model.request_embeddings(request_pieces(model.tokenizer, item, model.settings, None), with_context=False)
    assert alone.embeds.shape[0] == len(pieces.prefix) + len(model.tokenizer(BOXED_CUE.lstrip()).input_ids)


def test_layer_injection_replaces_the_soft_positions_at_layer_n(tiny_lm_dir):
    """inject="layer": the states entering generator layer N at the soft positions are the
    compressor's layer-N output (its residual stream, before the final norm), wherever left padding
    puts them; every other position enters layer N exactly as without injection."""
    model = SoftModel.create(settings_for(tiny_lm_dir, inject="layer"), device="cpu", dtype=torch.float32)
    model.eval()
    requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in items()[:2]]
    seen = []

    def capture(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    with torch.no_grad():
        softs = model.compress(requests)
        rows = [model.request_embeddings(p, s) for p, s in zip(requests, softs)]
        (embeds, mask, positions), injection = model.batch(rows)
        layer = _decoder_layers(model.generator)[model.settings.n_layers]
        with model.injecting(injection):
            handle = layer.register_forward_pre_hook(capture, with_kwargs=True)  # runs after the injection's
            try:
                model.generator(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
            finally:
                handle.remove()
        handle = layer.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            model.generator(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        finally:
            handle.remove()
    states, where = injection
    width = embeds.shape[1]
    for i, (row, soft) in enumerate(zip(rows, softs)):
        start = width - row.embeds.shape[0] + row.offset
        assert where[i].nonzero().flatten().tolist() == list(range(start, start + len(soft)))
        assert torch.allclose(soft.inputs, model._rescale(soft.states))  # the input placeholders: the same, rescaled
    injected, plain = seen
    assert torch.allclose(injected[where], states[where])
    assert not torch.allclose(plain[where], states[where])
    assert torch.allclose(injected[~where], plain[~where])


def test_batched_compression_equals_one_at_a_time(model):
    requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in items()]
    model.eval()
    with torch.no_grad():
        together = model.compress(requests)
        alone = [model.compress([pieces])[0] for pieces in requests]
    for a, b in zip(together, alone):
        assert torch.allclose(a.inputs, b.inputs, atol=1e-5)


def test_embeddings_generate_what_token_ids_generate_under_left_padding(model):
    """The masks and positions of the injection: a text request fed as embeddings, padded in a batch
    with longer ones, gives the same greedy tokens as the plain model on its token ids alone."""
    requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in items()]
    rows = [model.request_embeddings(pieces) for pieces in requests]  # text: no soft context, no injection
    with model.adapter_set_for(soft=False):
        batched = model.generate(rows, max_new_tokens=6)
        base = model.generator
        for pieces, answer in zip(requests, batched):
            ids = torch.tensor([pieces.prefix + pieces.context + pieces.cue])
            with torch.no_grad():
                out = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                    do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                                    eos_token_id=sc_stop_ids(model), stop_strings=["}"], tokenizer=model.tokenizer)
            # (transformers' own stop_strings here, against the model's closing-token criterion)
            single = [t for t in out[0, ids.shape[1]:].tolist()]
            stops = set(sc_stop_ids(model))
            single = single[: next((i for i, t in enumerate(single) if t in stops), len(single))]
            assert answer == single


def sc_stop_ids(model):
    from tokenskip.models.loading import stop_token_ids

    return stop_token_ids(model.tokenizer)


def test_the_compressor_is_the_generators_first_n_layers(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model = SoftModel.create(settings_for(tiny_lm_dir, n_layers=1), device="cpu", dtype=torch.float32)
    full = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    assert model.compressor.config.num_hidden_layers == 1
    assert len(model.compressor.layers) == 1
    for name, value in model.compressor.layers[0].state_dict().items():
        assert torch.equal(value, full.model.layers[0].state_dict()[name]), name
    # the same hidden states as the generator's own first layer on the same tokens
    ids = torch.tensor([model.tokenizer("one two three four", add_special_tokens=False).input_ids])
    with torch.no_grad():
        ours = model.compressor(input_ids=ids, output_hidden_states=True).hidden_states[1]
        theirs = full.model(input_ids=ids, output_hidden_states=True).hidden_states[1]
    # the compressor's last layer is its final one, so its hidden states come out through the final norm
    assert torch.allclose(ours, model.compressor.norm(theirs), atol=1e-5)
    # and trained apart from it: the embedding table stays frozen, the layers and memory train
    groups = model.trainable()
    assert not model.compressor.get_input_embeddings().weight.requires_grad
    assert any(p is model.memory for p in groups["compressor"])
    assert all(p.requires_grad for p in model.compressor.layers[0].parameters())
    assert groups["generator"] and all("lora" in n for n, p in model.generator.named_parameters() if p.requires_grad)


def test_n_layers_must_leave_a_generator(tiny_lm_dir):
    with pytest.raises(UsageError, match="below the generator's 2 layers"):
        SoftModel.create(settings_for(tiny_lm_dir, n_layers=2), device="cpu", dtype=torch.float32)


# ---------------------------------------------------------------- training, saving, loading


def train_cli(tiny_lm_dir: Path, data: Path, out: Path, *extra: str) -> dict:
    return soft_stage.main(["train", "--input", str(data), "--output-dir", str(out), "--model-path", str(tiny_lm_dir),
                            "--n-layers", "1", "--mem-tokens", "2", "--block-size", "8", "--lora-r", "4",
                            "--lora-alpha", "8", "--batch-size", "2", "--device", "cpu", "--max-answer-tokens", "4",
                            "--no-progress", *extra])


def test_two_training_steps_save_a_model_that_loads_back_the_same(tiny_lm_dir, tmp_path):
    data = write_cots(tmp_path / "cots.jsonl")
    out = tmp_path / "soft"
    summary = train_cli(tiny_lm_dir, data, out, "--max-steps", "2", "--lr", "1e-2", "--compressor-lr", "1e-2")
    assert summary["steps"] == 2 and summary["examples"] == 4
    log = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    recorded = json.loads((out / SETTINGS_FILE).read_text())
    assert (recorded["n_layers"], recorded["mem_tokens"], recorded["block_size"]) == (1, 2, 8)
    assert recorded["base_model"] == str(tiny_lm_dir)
    assert (out / GENERATOR_ADAPTER_DIR / "adapter_config.json").is_file()
    assert (out / COMPRESSOR_DIR / "config.json").is_file()
    assert not (out / CHECKPOINT).exists()
    teacher = [json.loads(line) for line in (out / TEACHER_FILE).read_text().splitlines()]
    assert len(teacher) == 4
    # the compressor moved away from the base model's layer, and the adapter from zero
    fresh = SoftModel.create(settings_for(tiny_lm_dir), device="cpu", dtype=torch.float32)
    loaded = SoftModel.load(out, device="cpu", dtype=torch.float32)
    weight = "self_attn.q_proj.weight"
    assert not torch.equal(loaded.compressor.layers[0].state_dict()[weight],
                           fresh.compressor.layers[0].state_dict()[weight])
    lora_b = [p for n, p in loaded.generator.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    # a second load computes exactly the same soft contexts and answers
    again = SoftModel.load(out, device="cpu", dtype=torch.float32)
    requests = [request_pieces(loaded.tokenizer, item, loaded.settings, item.context) for item in items()]
    with torch.no_grad():
        for a, b in zip(loaded.compress(requests), again.compress(requests)):
            assert torch.equal(a.inputs, b.inputs)
    assert generate_answers(loaded, requests, condition="soft", max_new_tokens=4, batch_size=2) == \
        generate_answers(again, requests, condition="soft", max_new_tokens=4, batch_size=2)


def test_save_then_load_round_trips_every_trained_tensor(tiny_lm_dir, tmp_path):
    model = SoftModel.create(settings_for(tiny_lm_dir), device="cpu", dtype=torch.float32, seed=1)
    with torch.no_grad():
        model.memory.add_(0.5)
        model.scale.mul_(2.0)
        next(p for n, p in model.generator.named_parameters() if "lora_B" in n).add_(0.25)
        model.compressor.layers[0].mlp.up_proj.weight.add_(0.125)
    model.save(tmp_path / "m")
    loaded = SoftModel.load(tmp_path / "m", device="cpu", dtype=torch.float32)
    assert torch.equal(loaded.memory, model.memory) and torch.equal(loaded.scale, model.scale)
    assert torch.equal(loaded.compressor.layers[0].mlp.up_proj.weight, model.compressor.layers[0].mlp.up_proj.weight)
    ours = {n: p for n, p in model.generator.named_parameters() if "lora_" in n}
    theirs = {n: p for n, p in loaded.generator.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)


def test_lora_compressor_round_trips(tiny_lm_dir, tmp_path):
    model = SoftModel.create(settings_for(tiny_lm_dir, compressor_train="lora"), device="cpu", dtype=torch.float32)
    groups = model.trainable()
    assert all(p.requires_grad for p in groups["compressor"])
    with torch.no_grad():
        next(p for n, p in model.compressor.named_parameters() if "lora_B" in n).add_(0.3)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / COMPRESSOR_DIR / "adapter_config.json").is_file()
    loaded = SoftModel.load(tmp_path / "m", device="cpu", dtype=torch.float32)
    pieces = request_pieces(model.tokenizer, items()[1], model.settings, items()[1].context)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.compress([pieces])[0].inputs, loaded.compress([pieces])[0].inputs, atol=1e-6)


def test_a_killed_training_run_resumes_from_its_checkpoint(tiny_lm_dir, tmp_path, monkeypatch):
    data = write_cots(tmp_path / "cots.jsonl")
    out = tmp_path / "soft"

    def killed(self, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(SoftModel, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train_cli(tiny_lm_dir, data, out, "--epochs", "2", "--save-every", "1", "--target", "gold")
    assert (out / CHECKPOINT).is_file() and not (out / SETTINGS_FILE).exists()
    assert len((out / TRAIN_LOG).read_text().splitlines()) == 4
    monkeypatch.undo()
    summary = train_cli(tiny_lm_dir, data, out, "--epochs", "2", "--save-every", "1", "--target", "gold")
    assert summary["steps"] == 4
    # the step that was done but not checkpointed (step 4, after the last checkpoint at 3) runs again
    steps = [json.loads(line)["step"] for line in (out / TRAIN_LOG).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4]
    assert (out / SETTINGS_FILE).is_file() and not (out / CHECKPOINT).exists()
    # another recipe on the same folder is refused rather than mixed in
    (out / CHECKPOINT).write_bytes(b"")
    monkeypatch.setattr(torch, "load", lambda *a, **k: {"recorded": {"other": 1}})
    with pytest.raises(UsageError, match="other settings or data"):
        train_cli(tiny_lm_dir, data, out, "--epochs", "2", "--save-every", "1", "--target", "gold")


# ---------------------------------------------------------------- evaluation and the report


def test_evaluation_writes_metrics_that_report_shows(tiny_lm_dir, tmp_path):
    from tokenskip.stages import report

    data = write_cots(tmp_path / "cots.jsonl")
    held_out = write_cots(tmp_path / "held_out.jsonl", hard=True)
    out = tmp_path / "soft"
    train_cli(tiny_lm_dir, data, out, "--max-steps", "1", "--target", "gold")
    metrics = soft_stage.main(["evaluate", "--model-dir", str(out), "--input", str(held_out), "--device", "cpu",
                               "--latency-probe", "2", "--max-answer-tokens", "4", "--batch-size", "3",
                               "--no-progress"])
    assert list(metrics["conditions"]) == ["question", "text", "hard", "soft", "hybrid"]
    assert metrics["stage"] == METRICS_KIND and metrics["n_eval"] == 4
    for key in ("acc_question_only", "acc_text", "acc_soft", "positions_text", "positions_soft", "prefill_ms_text",
                "prefill_ms_soft"):
        assert metrics[key] is not None, key
    text, soft = metrics["conditions"]["text"], metrics["conditions"]["soft"]
    assert metrics["positions_text"] == text["context_positions"] > soft["context_positions"] > 0
    assert metrics["conditions"]["question"]["context_positions"] == 0
    assert metrics["conditions"]["hard"]["context_positions"] < text["context_positions"]
    assert soft["n_probe"] == 2 and soft["compress_ms"] > 0 and text["compress_ms"] == 0
    records = [json.loads(line) for line in (out / "eval" / "predictions_soft.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {"model_answer", "prediction", "accuracy", "context_positions"} <= set(records[0])
    tables = report.main([str(out / "eval"), "--out-dir", str(tmp_path / "report")])
    assert len(tables) == 1 and tables[0].soft["acc_soft"] == metrics["acc_soft"]
    text_md = (tmp_path / "report" / "results.md").read_text()
    assert "## Soft compression" in text_md and "question + soft-compressed CoT" in text_md
    assert f"{100 * metrics['acc_text']:.1f}%" in text_md


def test_hard_conditions_need_hard_cots(tiny_lm_dir, tmp_path):
    data = write_cots(tmp_path / "cots.jsonl")
    out = tmp_path / "soft"
    train_cli(tiny_lm_dir, data, out, "--max-steps", "1", "--target", "gold")
    with pytest.raises(UsageError, match="need hard-compressed CoTs"):
        soft_stage.main(["evaluate", "--model-dir", str(out), "--input", str(data), "--device", "cpu",
                         "--conditions", "question", "hard", "--no-progress"])


# ---------------------------------------------------------------- input files and errors


def test_items_from_stage1_and_stage2_files(tmp_path):
    stage1 = tmp_path / "predictions.jsonl"
    stage1.write_text(json.dumps({
        "id": "a", "messages": [{"role": "user", "content": "How many?"}], "answer": "5", "accuracy": True,
        "model_output": "2 + 3 = 5 apples.\n\nThe final answer is: $\\boxed{5}$", "prediction": "5"}) + "\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"model_type": "chat"}))
    [item] = load_items(stage1)
    assert (item.question, item.context, item.answer, item.thinking) == ("How many?", "2 + 3 = 5 apples.", "5", False)
    thinking = tmp_path / "t" / "predictions.jsonl"
    thinking.parent.mkdir()
    thinking.write_text(json.dumps({
        "id": "b", "messages": [{"role": "user", "content": "Q"}], "answer": "4", "accuracy": True,
        "model_output": "<think>\n2 + 2 = 4\n</think>\n\n$\\boxed{4}$", "prediction": "4"}) + "\n")
    (thinking.parent / "metrics.json").write_text(json.dumps({"model_type": "chat"}))
    [think] = load_items(thinking)
    assert think.thinking and think.context == "2 + 2 = 4"
    stage2 = tmp_path / "ratio.jsonl"
    stage2.write_text(json.dumps({"id": "c", "question": "Q", "answer": "9", "cot": "4 + 5 = 9 in all",
                                  "compressed_cot": "4 + 5 = 9"}) + "\n")
    [hybrid] = load_items(stage2)
    assert hybrid.context == "4 + 5 = 9" and hybrid.hard_context == "4 + 5 = 9"
    [original] = load_items(stage2, context_field="cot")
    assert original.context == "4 + 5 = 9 in all" and original.hard_context == "4 + 5 = 9"
    [evaluated] = load_items(stage2, prefer_hard=False)  # evaluation: the text condition reads the original
    assert evaluated.context == "4 + 5 = 9 in all" and evaluated.hard_context == "4 + 5 = 9"


@pytest.mark.parametrize("line, message", [
    ({"question": "Q"}, "needs a question and an answer"),
    ({"question": "Q", "answer": "1"}, "no CoT field"),
])
def test_unusable_records_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(UsageError, match=message):
        load_items(path)


def test_recipes_are_checked_and_flags_override_them(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("n_layers: 8\nlr: 3.0e-4\n")
    args = soft_stage.parse(["train", "--input", "x", "--output-dir", "y", "--recipe", str(recipe), "--lr", "1e-3"])
    assert args.n_layers == 8 and args.lr == 1e-3 and args.mem_tokens == 8
    recipe.write_text("n_layer: 8\n")
    with pytest.raises(UsageError, match="unknown key 'n_layer'"):
        soft_stage.parse(["train", "--input", "x", "--output-dir", "y", "--recipe", str(recipe)])
    with pytest.raises(UsageError, match="does not exist"):
        soft_stage.parse(["train", "--input", "x", "--output-dir", "y", "--recipe", str(tmp_path / "none.yaml")])


def test_shipped_recipes_parse():
    root = ROOT / "configs" / "soft_compression"
    recipes = sorted(root.glob("*.yaml"))
    assert len(recipes) >= 2
    for recipe in recipes:
        args = soft_stage.parse(["train", "--input", "x", "--output-dir", "y", "--recipe", str(recipe)])
        assert args.n_layers >= 1 and args.mem_tokens >= 1


def test_a_folder_without_settings_is_not_a_model(tmp_path):
    with pytest.raises(UsageError, match="not a trained soft compressor"):
        soft_stage.main(["evaluate", "--model-dir", str(tmp_path), "--input", str(tmp_path / "x.jsonl")])


def test_answers_are_cut_where_the_box_closes():
    assert answer_of(BOXED_CUE, "72}$ and more") == "72}"
    assert answer_of(BOXED_CUE, "72") == "72"
    assert answer_of(THINK_CLOSE_CUE, "The answer is 4.") == "The answer is 4."


def test_any_causal_lm_qwen2_architecture(tmp_path, smollm2_dir):
    """A tiny random Qwen2 (its config lists a type per layer, which the compressor's copy must cut
    to N): compressor, layer injection and a training step work as on Llama."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen2")
    tokenizer.save_pretrained(tmp_path / "qwen2")
    model = SoftModel.create(settings_for(tmp_path / "qwen2", n_layers=2, inject="layer"), device="cpu",
                                dtype=torch.float32)
    assert len(model.compressor.layers) == 2
    pieces = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in items()[:2]]
    loss = model.loss([(p, target_ids(model.tokenizer, "7}")) for p in pieces])
    loss.backward()
    assert torch.isfinite(loss) and model.memory.grad is not None and model.memory.grad.abs().sum() > 0


def test_calibration_centres_the_memory_states_at_the_embeddings_spread(tiny_lm_dir):
    model = SoftModel.create(settings_for(tiny_lm_dir), device="cpu", dtype=torch.float32)
    model.eval()
    requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in items()]
    seen = model.fit_output_map(requests)
    assert seen["n"] == sum(soft_positions(len(p.context), model.settings) for p in requests)
    with torch.no_grad():
        out = torch.cat([soft.inputs for soft in model.compress(requests)])
    assert out.mean(0).abs().max() < 1e-4  # centred
    target = model.generator.get_input_embeddings().weight.std(0)
    spread = out.std(0)
    # each dimension at the embeddings' spread; those with almost no spread (clamped gain) below it, never above
    assert torch.all(spread <= target * 1.001)
    assert (torch.isclose(spread, target, rtol=1e-3)).float().mean() > 0.5

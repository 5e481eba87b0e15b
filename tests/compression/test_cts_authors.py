"""CTS as its authors ran it (`CTS_data_get.py --selection authors`) must return exactly what their
llmlingua call returns, from one scoring pass for every ratio.

The reference is llmlingua's causal `PromptCompressor` itself, called with the authors' arguments
spelled out below, on a tiny random-weight Qwen2 with a byte-level BPE tokenizer and SmolLM2's
8,192-token context. The texts cover every regime of that call (bench/cts_modes.md): short CoTs it never prunes,
a mid-length one pruned only at its start, one pruned in its first 1,800-token window with the tail
kept, and one long enough to reach a second window.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from tokenskip.compression.scorers import CoT, scorer_class
from tokenskip.compression.scorers.cts_authors import AuthorsCTSScorer, _LegacyCacheModel, load_compressor
from tokenskip.compression.scorers.llmlingua2 import use_offline_tiktoken
from tokenskip.core import layout
from tokenskip.core.cli import run_cli
from tokenskip.stages import cts as cts_stage

RATES = (0.9, 0.8, 0.7, 0.6, 0.5)
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
SHORT = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."


def the_authors_call(compressor, thinking: str, question: str, rate: float) -> str:
    """CTS/CTS_data_get.py's call, argument for argument."""
    return compressor.compress_prompt(
        context=thinking,
        instruction="",
        question=question,
        concate_question=False,
        rate=rate,
        use_context_level_filter=False,
        use_token_level_filter=True,
        condition_compare=True,
        condition_in_question="after",
        iterative_size=1800,
        force_reserve_digit=True,
        rank_method="longllmlingua",
    )["compressed_prompt"]


def step(i: int) -> str:
    a, b = 7 * i % 50 + 3, 11 * i % 40 + 2
    return f"Step {i}: she has {a} clips and gets {b} more, so {a} + {b} = {a + b} clips."


def steps(tokenizer, n_tokens: int) -> str:
    """Arithmetic steps, one a line, until the text has at least n_tokens tokens."""
    lines, i = [], 0
    while True:
        lines.append(step(i))
        text = "\n".join(lines)
        i += 1
        if len(tokenizer(text, add_special_tokens=False).input_ids) >= n_tokens:
            return text


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer random-weight Qwen2 with an 8,192-token context, like SmolLM2's, and a byte-level BPE
    tokenizer of 1,000 tokens trained here: llmlingua computes full-vocabulary logits for every
    token, which a real 49k vocabulary makes slow on texts of thousands of tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [QUESTION, SHORT, *(step(i) for i in range(300))]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True, initializer_range=0.1)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen2-8k")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scorer(tiny_dir) -> AuthorsCTSScorer:
    return AuthorsCTSScorer(tiny_dir, device="cpu", progress=False)


@pytest.fixture(scope="module")
def cots(scorer) -> dict[str, CoT]:
    tokenizer = scorer.compressor.tokenizer
    return {"short": CoT(SHORT, QUESTION, "72"),
            "start pruned": CoT(steps(tokenizer, 700), QUESTION, "1"),     # (1798 - s)/3 < c < (1798 - s)/2
            "unpruned mid": CoT(steps(tokenizer, 1200), QUESTION, "1"),    # (1798 - s)/2 <= c < 1800 - s
            "first window": CoT(steps(tokenizer, 2000), QUESTION, "1"),    # one full window, the tail kept
            "two windows": CoT(steps(tokenizer, 3700), "How many clips?", "1")}  # a second window


@pytest.fixture(scope="module")
def llmlingua_outputs(tiny_dir, cots) -> dict[tuple[str, float], str]:
    """llmlingua itself, one call per CoT and rate, for the CoTs that never reach a second window."""
    use_offline_tiktoken()
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=str(tiny_dir), device_map="cpu")
    return {(name, rate): the_authors_call(compressor, cot.text, cot.question, rate)
            for name, cot in cots.items() if name != "two windows" for rate in RATES}


def words_match(ours: str, theirs: str) -> None:
    assert ours.split(" ") == theirs.split(" ")
    assert ours == theirs


def test_matches_llmlingua_word_for_word(scorer, cots, llmlingua_outputs):
    names = [name for name in cots if name != "two windows"]
    scored = scorer.score([cots[name] for name in names])
    for name, one in zip(names, scored):
        for rate in RATES:
            words_match(scorer.select(one, rate), llmlingua_outputs[name, rate])


def test_the_comparison_is_not_trivial(cots, llmlingua_outputs):
    """The call prunes the mid-length and the long CoT, less as γ rises, and never the short one
    or the one whose window falls outside it: the regimes bench/cts_modes.md describes."""
    for name in ("short", "unpruned mid"):
        assert all(llmlingua_outputs[name, rate] == cots[name].text for rate in RATES)
    for name in ("start pruned", "first window"):
        lengths = [len(llmlingua_outputs[name, rate]) for rate in RATES]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(RATES)
        assert lengths[0] < len(cots[name].text)
    # the first window is pruned, the tail after it kept whole
    tail = cots["first window"].text[-500:]
    assert all(llmlingua_outputs["first window", rate].endswith(tail) for rate in RATES)


def count_forward_passes(scorer, monkeypatch) -> list[int]:
    calls = []
    model = scorer.compressor.model.model
    original = model.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return calls


def test_one_scoring_pass_serves_every_ratio(scorer, cots, monkeypatch):
    """`select` runs no model pass for a CoT whose later windows llmlingua never reaches; a CoT
    that reaches a second window has that window scored at each γ, on that γ's compressed text."""
    calls = count_forward_passes(scorer, monkeypatch)
    scored = scorer.score([cots["start pruned"], cots["two windows"]])
    assert len(calls) == 4  # two first-window passes per CoT
    for rate in RATES:
        scorer.select(scored[0], rate)
    assert len(calls) == 4
    scorer.select(scored[1], 0.5)
    assert len(calls) > 4


def test_long_cots_match_the_per_call_loop(tiny_dir, scorer, cots):
    """A second window needs llmlingua's KV-cache code, which transformers 5 breaks (its cache is
    no list of pairs); with the cache adapter, llmlingua's own per-call loop and the scorer agree."""
    use_offline_tiktoken()
    from llmlingua import PromptCompressor

    cot = cots["two windows"]
    plain = PromptCompressor(model_name=str(tiny_dir), device_map="cpu")
    if not hasattr(plain.model(torch.tensor([[1, 2]])).past_key_values, "layers"):
        pytest.skip("this transformers returns the cache format llmlingua expects")
    with pytest.raises(ValueError, match="unpack"):
        the_authors_call(plain, cot.text, cot.question, 0.5)
    adapted = load_compressor(str(tiny_dir), device="cpu")
    [scored] = scorer.score([cot])
    lengths = []
    for rate in (0.9, 0.5):
        expected = the_authors_call(adapted, cot.text, cot.question, rate)
        words_match(scorer.select(scored, rate), expected)
        lengths.append(len(expected))
    assert lengths == sorted(lengths, reverse=True) and lengths[0] < len(cot.text)


def test_cache_adapter_gives_the_models_own_logits(tiny_dir):
    """A forward pass fed the adapter's list of (key, value) pairs continues the sequence exactly as
    one pass over the whole sequence does."""
    from transformers import AutoModelForCausalLM

    model = _LegacyCacheModel(AutoModelForCausalLM.from_pretrained(tiny_dir))
    ids = torch.arange(5, 25)[None]
    with torch.inference_mode():
        whole = model(ids, use_cache=True).logits
        first = model(ids[:, :12], use_cache=True)
        assert isinstance(first.past_key_values, list) and len(first.past_key_values[0]) == 2
        rest = model(ids[:, 12:], attention_mask=torch.ones_like(ids), past_key_values=first.past_key_values,
                     use_cache=True)
    assert torch.allclose(rest.logits, whole[:, 12:], atol=1e-5)


def test_cut_to_the_thinking_token_budget(tiny_dir, smollm2_dir, cots):
    """The thinking is cut to N target-model tokens before llmlingua reads it, as the authors did;
    a thinking of N tokens or fewer is left as it is."""
    from transformers import AutoTokenizer

    target = AutoTokenizer.from_pretrained(smollm2_dir)
    budget = len(target(SHORT, add_special_tokens=False).input_ids)
    scorer = AuthorsCTSScorer(tiny_dir, device="cpu", target_tokenizer=str(smollm2_dir),
                              max_thinking_tokens=budget, progress=False)
    cot = cots["start pruned"]
    [cut, short] = scorer.score([cot, CoT(SHORT, QUESTION, "72")])
    ids = target(cot.text, add_special_tokens=False).input_ids
    assert cut.cut and cut.thinking == target.decode(ids[:budget]) and cot.text.startswith(cut.thinking)
    assert not short.cut and short.thinking == SHORT
    uncut = AuthorsCTSScorer(tiny_dir, device="cpu", target_tokenizer=str(smollm2_dir), max_thinking_tokens=0,
                             progress=False)
    assert uncut.target_tokenizer is None and uncut.score([cot])[0].thinking == cot.text


def test_refuses_a_cot_without_question(scorer):
    from tokenskip.core.errors import UsageError

    with pytest.raises(UsageError, match="no question"):
        scorer.score([CoT(SHORT)])
    assert scorer.compress([CoT("", QUESTION)], [0.5]) == [{0.5: ""}]


def test_registered_with_its_own_output_folder():
    assert scorer_class("cts_authors") is AuthorsCTSScorer
    assert AuthorsCTSScorer.output_folder == layout.COMPRESSION_FOLDERS["cts_authors"] == "CTS_Authors_Compression"


# --- the stage: CTS_data_get.py --selection authors ---

def prediction(index: int, question: str, cot: str, answer: str) -> dict:
    output = f"{cot}\n\nThe final answer is: $\\boxed{{{answer}}}$"
    return {"id": f"gsm8k-train-{index}",
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": ""}],
            "answer": answer, "prompt": f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
            "model_output": output, "prediction": answer, "cot_length": len(output.split()), "accuracy": True}


def test_stage_writes_what_llmlingua_returns(tiny_dir, cots, llmlingua_outputs, tmp_path):
    samples = tmp_path / "tiny" / "gsm8k" / "135m" / "Original" / "train" / "samples"
    samples.mkdir(parents=True)
    records = [prediction(0, QUESTION, SHORT, "72"), prediction(1, QUESTION, cots["start pruned"].text, "1")]
    (samples / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (samples / "metrics.json").write_text(json.dumps({"model_path": str(tiny_dir)}))
    args = ["--input_data", str(samples / "predictions.jsonl"), "--reference_model", str(tiny_dir),
            "--device", "cpu", "--model-type", "qwen", "--selection", "authors", "--max-cot-tokens", "5000"]
    summary = cts_stage.main(args)
    folder = tmp_path / "tiny" / "gsm8k" / "135m" / "CTS_Authors_Compression"
    assert summary["method"] == "cts_authors" and summary["n_compressed"] == 2
    for rate in RATES:
        lines = [json.loads(line) for line in layout.ratio_file(folder, rate).read_text().splitlines()]
        assert [line["compressed_cot"] for line in lines] == [llmlingua_outputs["short", rate],
                                                             llmlingua_outputs["start pruned", rate]]
        assert summary["ratios"][str(rate)]["share_unpruned"] == 0.5  # the short CoT comes back whole
    assert not (folder.parent / "CTS_Compression").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--max-thinking-tokens", "100"], "--selection authors only"),
    (["--selection", "authors", "--max-thinking-tokens", "-1"], "0 \\(no cut\\) or positive"),
    (["--selection", "question"], "invalid choice"),
])
def test_bad_flags_give_one_line_errors(extra, message, tiny_dir, tmp_path, capsys):
    import re

    args = ["--input_data", str(tmp_path / "predictions.jsonl"), "--reference_model", str(tiny_dir), *extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cts_stage.main, args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines


# --- the authors' training recipe ---

RECIPES = ROOT / "configs" / "examples" / "train_full"
AUTHORS_RECIPE = {"stage": "sft", "finetuning_type": "full", "cutoff_len": 4096, "per_device_train_batch_size": 2,
                  "gradient_accumulation_steps": 1, "learning_rate": 1.0e-5, "num_train_epochs": 3.0,
                  "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "adam_beta1": 0.9, "adam_beta2": 0.95,
                  "weight_decay": 1.0e-4, "optim": "adamw_torch", "bf16": True}


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_recipes_keep_the_authors_hyperparameters(recipe):
    import yaml

    config = yaml.safe_load((RECIPES / recipe).read_text())
    lora = config["finetuning_type"] == "lora"
    # the LoRA variant: TokenSkip's adapter and its learning rate, the authors' other settings
    expected = {**AUTHORS_RECIPE, **({"finetuning_type": "lora", "learning_rate": 5.0e-5} if lora else {})}
    assert {key: config.get(key) for key in expected} == expected
    assert (ROOT / config["deepspeed"]).is_file()
    assert json.loads((ROOT / config["deepspeed"]).read_text())[
        "zero_optimization"]["stage"] == 3
    assert "cts_authors" in config["dataset"]
    assert (lora and config["lora_rank"] == 8) or not lora
    # a template LLaMA-Factory 0.9.5 registers (read from its source: importing it takes seconds)
    import importlib.util

    template_source = Path(importlib.util.find_spec("llamafactory").origin).parent / "data" / "template.py"
    assert f'name="{config["template"]}"' in template_source.read_text()

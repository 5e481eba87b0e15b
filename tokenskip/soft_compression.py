"""Hybrid stage 2b: soft compression of a CoT into a few embeddings the generator reads (OSCAR-N-layers).

Hard compression (stage 2) drops CoT tokens; soft compression replaces what is left by a handful of
continuous vectors. Following OSCAR (arXiv 2504.07109), N-layers variant:

* The compressor is the generator's own first N layers (a copy, with its embedding table), so its
  hidden states already live in the generator's space and it needs no pretraining. It reads
  `[question][CoT block][MEM_1 ... MEM_m]` and its last hidden states at the m memory positions are
  that block's embeddings. A full block of `block_size` tokens gets `mem_tokens` of them (OSCAR: 8
  per 128, 16x); a shorter block gets proportionally fewer, at least one, so that short CoTs are
  compressed at the same rate as long ones.
* The generator reads its usual prompt, then the blocks' embeddings in place of the CoT's tokens,
  then the answer cue, and writes the answer. It is trained with LoRA (r 16, alpha 32, dropout 0.1,
  all linear layers); the compressor is fully fine-tuned (or, to fit big models on one GPU, LoRA too).
* Objective: sentence-level distillation. The target is the answer the generator itself (the
  teacher: no adapter) writes when it reads the whole text CoT; `target="gold"` uses the dataset's answer.

One difference from OSCAR, said where it is made: the compressor's outputs pass through a learned
per-dimension affine map (centre and gain) before they are fed in, initialised from the training
data so that the memory states come out centred and at the spread of the generator's token
embeddings. Without it, a small model's memory states are ~30x larger than token embeddings and
nearly identical across inputs (cosine 0.9995 between different CoTs in SmolLM2-135M: a few
"massive activation" dimensions carry the norm), so the generator sees one constant vector and
training on a CPU budget never leaves the question-only answer (bench/README.md has the runs).

A trained model is a folder: `soft_compression.json` (the settings, written last: its presence means
the folder is complete), `compressor/` (an HF model holding the N layers, or a peft adapter over
them), `generator_adapter/` (peft), and `memory.safetensors` (the memory-token embeddings and the scale).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from tokenskip import layout, prompts, thinking
from tokenskip.errors import UsageError
from tokenskip.jsonio import AppendLog, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic

SETTINGS_FILE = "soft_compression.json"
COMPRESSOR_DIR = "compressor"
GENERATOR_ADAPTER_DIR = "generator_adapter"
MEMORY_FILE = "memory.safetensors"
TEACHER_FILE = "teacher_answers.jsonl"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1

# What the generator is cued with after the CoT: TokenSkip's final-answer sentence, opened up to the
# box, so that every condition (question alone included) answers with the number it boxes.
BOXED_CUE = prompts.ANSWER_MARKER + " $\\boxed{"
# A thinking model's CoT is its <think> block; after it, the model writes its answer section freely.
THINK_CLOSE_CUE = "\n</think>\n\n"

CONDITIONS = ("question", "text", "hard", "soft", "hybrid")
CONDITION_NAMES = {
    "question": "question alone",
    "text": "question + text CoT",
    "hard": "question + hard-compressed CoT",
    "soft": "question + soft-compressed CoT",
    "hybrid": "question + soft-compressed hard-compressed CoT",
}
METRICS_KIND = "soft_compression"  # metrics.json's "stage": how report.py tells these metrics apart


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class SoftSettings:
    """What defines a soft compressor; recorded in the model folder as soft_compression.json."""

    base_model: str
    n_layers: int = 5  # N: the generator's first N layers compress
    mem_tokens: int = 8  # l: memory embeddings for a full block
    block_size: int = 128  # CoT tokens per block
    compressor_train: str = "full"  # "full" (OSCAR) or "lora" (big models on one GPU)
    query_in_compressor: bool = True  # OSCAR compresses each block given the question
    max_question_tokens: int = 256
    max_context_tokens: int = 2048
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    prompt_format: str = "chat"  # the stage-1 prompt the generator reads (tokenskip/prompts.py)
    # where the generator takes the compressed states in: "input" (OSCAR: as input embeddings) or
    # "layer" (also at layer N, the compressor's own output layer, where they are the generator's
    # hidden states for those positions; see the module's docstring)
    inject: str = "input"

    def memory_count(self, n_block_tokens: int) -> int:
        """Memory embeddings for a block of `n_block_tokens`: `mem_tokens` per full block, at the same rate for less."""
        return max(1, math.ceil(n_block_tokens * self.mem_tokens / self.block_size))

    def check(self) -> None:
        if not 1 <= self.mem_tokens <= self.block_size:
            raise UsageError(f"--mem-tokens must be between 1 and --block-size ({self.block_size}), "
                             f"got {self.mem_tokens}")
        if self.n_layers < 1:
            raise UsageError(f"--n-layers must be at least 1, got {self.n_layers}")
        if self.inject not in ("input", "layer"):
            raise UsageError(f"--inject must be input or layer, got {self.inject!r}")
        if self.compressor_train not in ("full", "lora"):
            raise UsageError(f"--compressor-train must be full or lora, got {self.compressor_train!r}")


@dataclass(frozen=True)
class TrainSettings:
    """How the compressor and the generator's adapter are trained (OSCAR's values as defaults)."""

    target: str = "teacher"  # "teacher": sentence-level distillation; "gold": the dataset's answer
    lr: float = 1e-4  # the generator's LoRA
    compressor_lr: float = 5e-5  # the N-layer compressor
    warmup_ratio: float = 0.05
    weight_decay: float = 0.1
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_answer_tokens: int = 16  # the teacher's answers
    save_every: int = 50  # optimizer steps between checkpoints (a killed run resumes from the last)
    seed: int = 42


@dataclass(frozen=True)
class Item:
    """One question with the CoT the generator reads (its context) and the gold answer."""

    id: str
    question: str
    context: str
    answer: str
    answer_format: str = "math"
    thinking: bool = False  # a <think> block: cued with </think>, answered freely
    hard_context: str | None = None  # the hard-compressed CoT, when the input file has one


# ---------------------------------------------------------------- input files


def load_items(path: str | os.PathLike, *, context_field: str = "auto", model_type: str = "auto",
               max_items: int | None = None, prefer_hard: bool = True) -> list[Item]:
    """Questions and CoTs from any of the pipeline's files:

    * stage 1's predictions.jsonl: the CoT extracted from `model_output` as stage 2 extracts it;
    * stage 2's ratio files: with `prefer_hard` (training: the hybrid, soft compression after hard)
      `compressed_cot`, else (evaluation: the text condition reads the original) `cot`; the
      hard-compressed one is kept beside it either way, for the hard and hybrid conditions;
    * any JSONL with `question`, `cot` and `answer` fields (and `compressed_cot`, if any).
    """
    if context_field == "auto" and not prefer_hard:
        context_field = "auto-original"
    from tokenskip import compress, data

    path = Path(path)
    records = read_jsonl(path, what="CoT file")
    if not records:
        raise UsageError(f"{path} holds no records; point --input at a stage-1 or stage-2 file")
    items = []
    stage1_format = None
    for line_no, record in enumerate(records, start=1):
        where = f"{path}:{line_no}"
        question = record.get("question")
        if question is None and record.get("messages"):
            question = record["messages"][0].get("content")
        answer = record.get("answer")
        if not isinstance(question, str) or answer is None:
            raise UsageError(f"{where}: needs a question and an answer; is this a stage-1 or stage-2 file?")
        hard = None
        is_thinking = "answer_section" in record
        if "compressed_cot" in record and context_field in ("auto", "compressed_cot"):
            context, hard = record["compressed_cot"], record["compressed_cot"]
        elif context_field in ("auto", "auto-original", "cot") and "cot" in record:
            context, hard = record["cot"], record.get("compressed_cot")
        elif context_field in ("auto", "auto-original") and "model_output" in record:
            if stage1_format is None:
                stage1_format = compress.resolve_model_type(path, model_type)
            split = thinking.split_output(record["model_output"], record.get("prompt", ""))
            context, _ = compress.extract_cot(record["model_output"], stage1_format, split=split)
            is_thinking = split.is_thinking
            if context is None:
                continue  # no usable CoT (empty, cut off inside <think>): nothing to compress
        elif context_field not in ("auto", "auto-original", "cot", "compressed_cot") and context_field in record:
            context = record[context_field]
        else:
            wanted = "cot, compressed_cot or model_output" if context_field.startswith("auto") else context_field
            raise UsageError(f"{where}: no CoT field ({wanted}); pass --context-field NAME")
        if not isinstance(context, str) or not context.strip():
            continue
        items.append(Item(id=str(record.get("id", line_no)), question=question, context=context.strip(),
                          answer=str(answer), answer_format=data.record_answer_format(record),
                          thinking=is_thinking, hard_context=hard.strip() if isinstance(hard, str) else None))
    if not items:
        raise UsageError(f"{path}: no record has a usable CoT")
    return items[:max_items] if max_items else items


# ---------------------------------------------------------------- what the generator reads


@dataclass(frozen=True)
class Pieces:
    """One request's token ids around its context: prompt, then the context, then the answer cue."""

    prefix: list[int]
    context: list[int]
    cue: list[int]
    question: list[int]  # what the compressor reads before each block
    cue_text: str


@dataclass(frozen=True)
class Soft:
    """One request's compressed context: what the generator's input gets at its positions, and
    (inject="layer") the compressor's layer-N hidden states that replace them at layer N."""

    inputs: Any  # (positions, hidden)
    states: Any = None  # (positions, hidden) or None

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass(frozen=True)
class Row:
    """One request's input embeddings, and the soft context's place in them (for layer injection)."""

    embeds: Any  # (positions, hidden)
    soft: Soft | None = None
    offset: int = 0  # the first position of the soft context


def request_pieces(tokenizer, item: Item, settings: SoftSettings, context: str | None) -> Pieces:
    """The token ids of one request; `context` None is the question-alone condition."""
    prompt = prompts.build_prompt(item.question, model_type=settings.prompt_format, tokenizer=tokenizer,
                                  bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "")
    if item.thinking:
        prefix_text = prompt if thinking.opens_thinking(prompt) else prompt + "<think>\n"
        cue = THINK_CLOSE_CUE
    else:
        prefix_text = prompt
        cue = BOXED_CUE if context else BOXED_CUE.lstrip()
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    context_ids = encode(context)[: settings.max_context_tokens] if context else []
    return Pieces(encode(prefix_text), context_ids, encode(cue),
                  encode(item.question)[: settings.max_question_tokens], cue)


def blocks_of(context_ids: Sequence[int], settings: SoftSettings) -> list[list[int]]:
    return [list(context_ids[i:i + settings.block_size]) for i in range(0, len(context_ids), settings.block_size)]


def soft_positions(n_context_tokens: int, settings: SoftSettings) -> int:
    """How many embeddings a context of `n_context_tokens` becomes."""
    full, rest = divmod(n_context_tokens, settings.block_size)
    return full * settings.mem_tokens + (settings.memory_count(rest) if rest else 0)


def answer_of(cue_text: str, continuation: str) -> str:
    """The generated answer, cut where it ends: at the box's closing brace for the boxed cue."""
    if cue_text.endswith("\\boxed{"):
        end = continuation.find("}")
        return continuation[: end + 1] if end >= 0 else continuation
    return continuation


# ---------------------------------------------------------------- the model


def _torch():
    import torch

    return torch


def left_pad(rows: list, pad_row, *, with_labels: list | None = None):
    """Stack (n_i, hidden) tensors into a left-padded batch: embeddings, attention mask, position ids
    (counted from each row's first real position) and, for training, labels (-100 off the target)."""
    torch = _torch()
    width = max(row.shape[0] for row in rows)
    embeds, mask, labels = [], [], []
    for i, row in enumerate(rows):
        pad = width - row.shape[0]
        embeds.append(torch.cat([pad_row.expand(pad, -1), row]) if pad else row)
        mask.append([0] * pad + [1] * row.shape[0])
        if with_labels is not None:
            labels.append([-100] * pad + with_labels[i])
    device = rows[0].device
    mask_t = torch.tensor(mask, device=device)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    out = (torch.stack(embeds), mask_t, positions)
    return (*out, torch.tensor(labels, device=device)) if with_labels is not None else out


class SoftModel:
    """The generator (a peft model: LoRA on, or off for the teacher and the text conditions), the
    compressor (the first N layers), the memory embeddings and the output scale. It holds weights
    only: every call takes what it works on and returns what it made."""

    def __init__(self, generator, compressor, memory, scale, tokenizer, settings: SoftSettings, compute_dtype=None):
        self.generator, self.compressor = generator, compressor
        self.memory, self.scale = memory, scale
        self.tokenizer, self.settings = tokenizer, settings
        self.compute_dtype = compute_dtype  # bf16/fp16: forward passes under autocast (weights may stay fp32)

    def autocast(self):
        """Mixed precision where asked for: on CPU too (bf16 matmuls are ~1.5x faster on AVX512-BF16 cores)."""
        torch = _torch()
        if self.compute_dtype not in (torch.bfloat16, torch.float16):
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    # -- building and loading

    @classmethod
    def create(cls, settings: SoftSettings, *, device: str, dtype, seed: int = 0) -> SoftModel:
        """A new soft compressor over `settings.base_model`: the compressor copies its first N layers."""
        torch = _torch()
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        tokenizer, base = _load_generator(settings.base_model, device, _weights_dtype(device, dtype))
        n_total = base.config.num_hidden_layers
        if settings.n_layers >= n_total:
            raise UsageError(f"--n-layers {settings.n_layers} must be below the generator's {n_total} layers")
        lora = dict(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                    target_modules="all-linear")
        generator = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **lora))
        # a fully trained compressor keeps fp32 weights (AdamW on bf16 weights loses small updates)
        full = settings.compressor_train == "full"
        compressor = _load_compressor(settings, device, torch.float32 if full else _weights_dtype(device, dtype))
        _share_embeddings(compressor, base)
        if not full:
            compressor = get_peft_model(compressor, LoraConfig(**lora))
        embeddings = base.get_input_embeddings().weight.detach()
        # memory slots start at the mean token embedding, apart by a little noise so they can differ
        noise = torch.randn(settings.mem_tokens, embeddings.shape[1], device=embeddings.device)
        noise = noise * embeddings.float().std()
        memory = torch.nn.Parameter(embeddings.float().mean(0) + noise)
        # the output map: row 0 the centre, row 1 the gain (`calibrate` sets both from data)
        hidden = embeddings.shape[1]
        scale = torch.nn.Parameter(torch.stack([torch.zeros(hidden), torch.ones(hidden)]).to(device))
        return cls(generator, compressor, memory, scale, tokenizer, settings, dtype)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, device: str, dtype) -> SoftModel:
        torch = _torch()
        from peft import PeftModel
        from safetensors.torch import load_file

        folder = Path(folder)
        settings = read_settings(folder)
        weights = _weights_dtype(device, dtype)
        tokenizer, base = _load_generator(settings.base_model, device, weights)
        generator = PeftModel.from_pretrained(base, folder / GENERATOR_ADAPTER_DIR)
        if settings.compressor_train == "lora":
            compressor = _load_compressor(settings, device, weights)
            _share_embeddings(compressor, base)
            compressor = PeftModel.from_pretrained(compressor, folder / COMPRESSOR_DIR)
        else:
            saved = replace(settings, base_model=str(folder / COMPRESSOR_DIR))
            compressor = _load_compressor(saved, device, torch.float32)
            _share_embeddings(compressor, base)
        tensors = load_file(str(folder / MEMORY_FILE), device=device)
        memory = torch.nn.Parameter(tensors["memory"].float())
        scale = torch.nn.Parameter(tensors["scale"].float())
        model = cls(generator, compressor, memory, scale, tokenizer, settings, dtype)
        model.eval()
        return model

    def save(self, folder: str | os.PathLike) -> None:
        """Write the model into `folder`: everything into a temporary sibling first, then moved in,
        and soft_compression.json last, so a folder with that file is always whole."""
        from safetensors.torch import save_file

        folder = Path(folder)
        staging = folder / ".saving"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.generator.save_pretrained(staging / GENERATOR_ADAPTER_DIR)
        self.compressor.save_pretrained(staging / COMPRESSOR_DIR)
        if self.settings.compressor_train == "full":
            self.tokenizer.save_pretrained(staging / COMPRESSOR_DIR)
        save_file({"memory": self.memory.detach().contiguous().cpu(), "scale": self.scale.detach().float().cpu()},
                  str(staging / MEMORY_FILE))
        (folder / SETTINGS_FILE).unlink(missing_ok=True)
        for name in (GENERATOR_ADAPTER_DIR, COMPRESSOR_DIR, MEMORY_FILE):
            target = folder / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        staging.rmdir()
        write_json_atomic(folder / SETTINGS_FILE, {"format_version": FORMAT_VERSION, **asdict(self.settings)})

    # -- training state

    def trainable(self) -> dict[str, list]:
        """The parameters training updates, by group: the generator's LoRA, and the compressor side
        (its layers or their LoRA, its final norm, the memory embeddings and the scale)."""
        generator = [p for p in self.generator.parameters() if p.requires_grad]
        if self.settings.compressor_train == "full":
            embedding = self.compressor.get_input_embeddings().weight
            for p in self.compressor.parameters():
                p.requires_grad_(p is not embedding)  # the embedding table stays the generator's
        compressor = [p for p in self.compressor.parameters() if p.requires_grad]
        return {"generator": generator, "compressor": [*compressor, self.memory, self.scale]}

    def train(self) -> None:
        self.generator.train()
        self.compressor.train()

    def eval(self) -> None:
        self.generator.eval()
        self.compressor.eval()

    def state(self) -> dict:
        """What a checkpoint holds of the model: the trainable tensors, by name."""
        return {"generator": {k: v for k, v in self.generator.state_dict().items() if "lora_" in k},
                "compressor": self.compressor.state_dict() if self.settings.compressor_train == "full"
                else {k: v for k, v in self.compressor.state_dict().items() if "lora_" in k},
                "memory": self.memory.detach(), "scale": self.scale.detach()}

    def load_state(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"], strict=False)
        self.compressor.load_state_dict(state["compressor"], strict=False)
        with _torch().no_grad():
            self.memory.copy_(state["memory"])
            self.scale.copy_(state["scale"])

    # -- the forward passes

    @property
    def device(self):
        return self.memory.device

    def embed(self, ids: Sequence[int]):
        torch = _torch()
        table = self.generator.get_input_embeddings()
        return table(torch.tensor(list(ids), dtype=torch.long, device=self.device))

    def compress(self, requests: Sequence[Pieces], *, max_batch: int = 64) -> list:
        """Each request's context as (positions, hidden) embeddings: every block through the
        compressor with the question before it and its memory tokens after it."""
        torch = _torch()
        sequences, owners, counts = [], [], []
        for index, pieces in enumerate(requests):
            for block in blocks_of(pieces.context, self.settings):
                count = self.settings.memory_count(len(block))
                query = pieces.question if self.settings.query_in_compressor else []
                sequences.append(query + block)
                owners.append(index)
                counts.append(count)
        table = self.compressor.get_input_embeddings()
        outputs = []
        for start in range(0, len(sequences), max_batch):
            rows = []
            for ids, count in zip(sequences[start:start + max_batch], counts[start:start + max_batch]):
                tokens = table(torch.tensor(ids, dtype=torch.long, device=self.device))
                rows.append(torch.cat([tokens, self.memory[:count].to(tokens.dtype)]))
            embeds, mask, positions = left_pad(rows, table.weight[:1].detach() * 0)
            # layer injection takes the residual stream itself (before the final norm)
            layer = self.settings.inject == "layer"
            with self.autocast(), (_last_layer_output(self.compressor) if layer else nullcontext([])) as captured:
                hidden = self.compressor(inputs_embeds=embeds, attention_mask=mask,
                                         position_ids=positions).last_hidden_state
            hidden = captured[0] if layer else hidden
            for row, count in enumerate(counts[start:start + max_batch]):
                outputs.append(hidden[row, -count:])
        per_request = [[] for _ in requests]
        for owner, vectors in zip(owners, outputs):
            per_request[owner].append(vectors)
        softs = []
        for parts in per_request:
            if not parts:
                softs.append(None)
                continue
            vectors = torch.cat(parts)
            softs.append(Soft(self._rescale(vectors), vectors if self.settings.inject == "layer" else None))
        return softs

    def _rescale(self, vectors):
        """The compressor's outputs through the learned affine map (see the module's docstring)."""
        dtype = self.generator.get_input_embeddings().weight.dtype
        return ((vectors.float() - self.scale[0]) * self.scale[1]).to(dtype)

    def calibrate(self, requests: Sequence[Pieces]) -> dict:
        """Set the output map so that these requests' memory states come out centred, each dimension
        at the spread of the generator's token embeddings; returns what it saw (for the log)."""
        torch = _torch()
        with torch.no_grad():
            with self.autocast():
                softs = [soft for soft in self.compress(requests) if soft is not None]
            raw = torch.cat([(soft.inputs.float() / self.scale[1]) + self.scale[0] for soft in softs])
            if raw.shape[0] < 2:
                return {"n": raw.shape[0]}
            before = torch.nn.functional.cosine_similarity(raw[:, None], raw[None], dim=-1).mean().item()
            spread = raw.std(0)
            target = self.generator.get_input_embeddings().weight.float().std(0)
            gain = target / spread.clamp(min=spread.median().item() * 0.1)  # no dimension blown up from noise
            self.scale.copy_(torch.stack([raw.mean(0), gain]))
        return {"n": raw.shape[0], "mean_cosine_before": round(before, 5)}

    def request_embeddings(self, pieces: Pieces, soft: Soft | None = None, *, with_context: bool = True,
                           target: Sequence[int] = ()) -> Row:
        """One request's input embeddings: prompt, then the soft context (or the text context's
        token embeddings, or nothing), then the cue and, in training, the target."""
        torch = _torch()
        parts = [self.embed(pieces.prefix)]
        if soft is not None:
            parts.append(soft.inputs)
        elif with_context and pieces.context:
            parts.append(self.embed(pieces.context))
        parts.append(self.embed(list(pieces.cue) + list(target)))
        return Row(torch.cat(parts), soft, len(pieces.prefix))

    def batch(self, rows: Sequence[Row], labels: list | None = None):
        """Rows left-padded into one batch (see `left_pad`), and the layer injection they need:
        (states, mask) of the batch's shape, or None."""
        torch = _torch()
        padded = left_pad([row.embeds for row in rows], self._pad_row(), with_labels=labels)
        if self.settings.inject != "layer" or all(row.soft is None for row in rows):
            return padded, None
        width = padded[0].shape[1]
        hidden = rows[0].embeds.shape[1]
        states, where = [], []
        for row in rows:
            start = width - row.embeds.shape[0] + row.offset
            n = len(row.soft) if row.soft is not None else 0
            before, after = start, width - start - n
            zeros = lambda k: torch.zeros(k, hidden, device=self.device)  # noqa: E731
            states.append(torch.cat([zeros(before), row.soft.states.float(), zeros(after)]) if n else zeros(width))
            where.append([False] * before + [True] * n + [False] * after)
        return padded, (torch.stack(states), torch.tensor(where, device=self.device))

    @contextmanager
    def injecting(self, injection):
        """While the generator runs: the soft positions' hidden states entering layer N are replaced
        by the compressor's (prefill only; a decoding step has other shapes and is left alone)."""
        if injection is None:
            yield
            return
        states, where = injection
        layer = _decoder_layers(self.generator)[self.settings.n_layers]

        def replace_states(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[:2] != where.shape:
                return None
            new = _torch().where(where[..., None], states.to(hidden.dtype), hidden)
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        handle = layer.register_forward_pre_hook(replace_states, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def loss(self, batch: Sequence[tuple[Pieces, list[int]]]):
        """Cross-entropy of the targets given the soft-compressed contexts (the training step's loss)."""
        softs = self.compress([pieces for pieces, _ in batch])
        rows, labels = [], []
        for (pieces, target), soft in zip(batch, softs):
            row = self.request_embeddings(pieces, soft, with_context=False, target=target)
            rows.append(row)
            labels.append([-100] * (row.embeds.shape[0] - len(target)) + list(target))
        (embeds, mask, positions, label_t), injection = self.batch(rows, labels)
        # targets end every row (left padding), so only the last positions need logits: the
        # vocabulary projection of the whole sequence would cost a fifth of a small model's step
        keep = max(len(target) for _, target in batch)
        with self.autocast(), self.injecting(injection):
            logits = self.generator(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=keep + 1).logits[:, :-1]
        return _torch().nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                    label_t[:, -keep:].reshape(-1), ignore_index=-100)

    def _pad_row(self):
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return self.embed([pad_id]).detach()

    @contextmanager
    def reading(self, soft: bool):
        """The generator as a condition reads: with its adapter merged into the weights for soft
        contexts (so its latency is the base model's, not an unmerged LoRA's), without it for text."""
        if not soft:
            with self.generator.disable_adapter():
                yield
            return
        self.generator.merge_adapter()
        try:
            yield
        finally:
            self.generator.unmerge_adapter()

    @cached_property
    def closing_ids(self):
        """The ids of every token whose text holds `}` (where a boxed answer ends), found once."""
        torch = _torch()
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return torch.tensor([i for i, text in enumerate(texts) if "}" in text], device=self.device)

    def generate(self, rows: Sequence[Row], *, max_new_tokens: int, stop_at_brace: bool = True) -> list[list[int]]:
        """Greedy answers for a batch of request embeddings (inside `reading`); with `stop_at_brace`
        a row stops where its box closes."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        from tokenskip.modeling import stop_token_ids

        torch = _torch()
        closing = self.closing_ids
        stops = stop_token_ids(self.tokenizer)

        class ClosesTheBox(StoppingCriteria):
            """A row is done once it writes a token holding `}` (transformers' stop_strings rebuilds
            its tables for the whole vocabulary on every call: seconds per batch on a CPU)."""

            def __call__(self, input_ids, scores, **kwargs):
                return torch.isin(input_ids[:, -1], closing)

        (embeds, mask, _), injection = self.batch(rows)
        with torch.no_grad(), self.autocast(), self.injecting(injection):
            out = self.generator.generate(
                inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                eos_token_id=stops, pad_token_id=self.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([ClosesTheBox()]) if stop_at_brace else None)
        stops = set(stops)
        answers = []
        for row in out.tolist():
            ids = []
            for token in row:
                if token in stops:
                    break
                ids.append(token)
            answers.append(ids)
        return answers

    def prefill(self, row: Row) -> None:
        """One forward pass over a request's input, as generation's prefill does (timed by the probe)."""
        torch = _torch()
        (embeds, mask, positions), injection = self.batch([row])
        with torch.no_grad(), self.autocast(), self.injecting(injection):
            self.generator(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)


def _decoder_layers(model):
    """The model's stack of decoder layers (the ModuleList as long as its layer count), any architecture."""
    torch = _torch()
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UsageError(f"cannot find the decoder layers of {type(model).__name__}; use --inject input")


@contextmanager
def _last_layer_output(model):
    """Collects the output of the model's last decoder layer (its residual stream before the final norm)."""
    captured: list = []

    def keep(module, args, output):
        captured[:] = [output[0] if isinstance(output, tuple) else output]

    handle = _decoder_layers(model)[-1].register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


def _weights_dtype(device: str, dtype):
    """Frozen weights: in `dtype` on a GPU; fp32 on CPU, where bf16 is applied by autocast instead
    (CPU kernels for bf16 weights are slower than fp32 weights under autocast)."""
    torch = _torch()
    return torch.float32 if device == "cpu" else dtype


def _load_generator(path: str, device: str, dtype):
    from tokenskip.modeling import load_causal_lm, load_tokenizer, resolve_model_path

    path = resolve_model_path(path, "--model-path")
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return tokenizer, model


def _load_compressor(settings: SoftSettings, device: str, dtype):
    """The headless first N layers of the base model (weights beyond layer N are not loaded)."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    from tokenskip.errors import first_line
    from tokenskip.modeling import DOWNLOAD_HINT

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the layers past N are left out on purpose: no "unexpected keys" report
    try:
        config = AutoConfig.from_pretrained(settings.base_model, trust_remote_code=True)
        config.num_hidden_layers = settings.n_layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[: settings.n_layers]
        model = AutoModel.from_pretrained(settings.base_model, config=config, dtype=dtype, trust_remote_code=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not load the compressor from {settings.base_model} ({first_line(exc)}); "
                         f"{DOWNLOAD_HINT}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(device)


def _share_embeddings(compressor, generator) -> None:
    """The compressor reads tokens through the generator's own (frozen) embedding table: one copy in
    memory (1 GB for a 7B model), and the same token vectors the generator reads."""
    compressor.set_input_embeddings(generator.get_input_embeddings())


def read_settings(folder: Path) -> SoftSettings:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"{folder} is not a trained soft compressor (no {SETTINGS_FILE}); "
                         "train one with `python soft_compress.py train`")
    recorded = read_json(path, what="soft compressor settings")
    if recorded.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{path}: format version {recorded.get('format_version')} is not {FORMAT_VERSION}; retrain it")
    known = {f.name for f in fields(SoftSettings)}
    return SoftSettings(**{k: v for k, v in recorded.items() if k in known})


# ---------------------------------------------------------------- the teacher's answers


def generate_answers(model: SoftModel, requests: Sequence[Pieces], *, condition: str, max_new_tokens: int,
                     batch_size: int, desc: str | None = None) -> list[str]:
    """Greedy answers under one condition (see CONDITIONS), in batches, texts cut where the answer ends."""
    from tqdm.auto import tqdm

    torch = _torch()
    # batches of similar lengths waste less on padding; answers go back in the requests' order
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prefix) + len(requests[i].context))
    answers: dict[int, str] = {}
    soft = condition in ("soft", "hybrid")
    with torch.no_grad(), model.reading(soft):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, unit="batch"):
            chunk = order[start:start + batch_size]
            pieces = [requests[i] for i in chunk]
            softs = model.compress(pieces) if soft else [None] * len(pieces)
            rows = [model.request_embeddings(p, s, with_context=condition != "question") for p, s in zip(pieces, softs)]
            boxed = all(p.cue_text.endswith("\\boxed{") for p in pieces)
            for index, ids in zip(chunk, model.generate(rows, max_new_tokens=max_new_tokens, stop_at_brace=boxed)):
                text = model.tokenizer.decode(ids, skip_special_tokens=True)
                answers[index] = answer_of(requests[index].cue_text, text)
    return [answers[i] for i in range(len(requests))]


def teacher_targets(model: SoftModel, items: Sequence[Item], folder: Path, train: TrainSettings,
                    batch_size: int) -> dict[str, str]:
    """The teacher's answer for every item given its whole text CoT, kept in teacher_answers.jsonl
    so that a rerun (or a second recipe on the same data) reuses them."""
    with AppendLog(folder / TEACHER_FILE) as log:
        done = {record["id"]: record["answer"] for record in log.records
                if record.get("max_answer_tokens") == train.max_answer_tokens}
        pending = [item for item in items if item.id not in done]
        if pending:
            requests = [request_pieces(model.tokenizer, item, model.settings, item.context) for item in pending]
            model.eval()
            for start in range(0, len(pending), 256):  # logged in slices: a killed run keeps what it made
                chunk = pending[start:start + 256]
                answers = generate_answers(model, requests[start:start + 256], condition="text",
                                           max_new_tokens=train.max_answer_tokens, batch_size=batch_size,
                                           desc=f"teacher answers {start + len(chunk)}/{len(pending)}")
                for item, answer in zip(chunk, answers):
                    log.append({"id": item.id, "answer": answer, "max_answer_tokens": train.max_answer_tokens})
                    done[item.id] = answer
    return done


def target_ids(tokenizer, text: str) -> list[int]:
    """A target's token ids, ended by the turn's end so the generator learns to stop."""
    from tokenskip.modeling import stop_token_ids

    ends = stop_token_ids(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else ends[0]
    return tokenizer(text, add_special_tokens=False).input_ids + [end]


# ---------------------------------------------------------------- training


def train(items: Sequence[Item], *, settings: SoftSettings, train_settings: TrainSettings, out_dir: Path,
          device: str, dtype, max_steps: int | None = None, teacher_batch: int = 16, progress: bool = True) -> dict:
    """Train a soft compressor on `items` into `out_dir` (resumes from its checkpoint); returns the summary."""
    torch = _torch()
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    settings.check()
    started = time.perf_counter()
    model = SoftModel.create(settings, device=device, dtype=dtype, seed=train_settings.seed)
    if train_settings.target == "teacher":
        targets = teacher_targets(model, items, out_dir, train_settings, teacher_batch)
    elif train_settings.target == "gold":
        targets = {item.id: (f"{item.answer}}}" if not item.thinking else item.answer) for item in items}
    else:
        raise UsageError(f"--target must be teacher or gold, got {train_settings.target!r}")
    teacher_seconds = time.perf_counter() - started
    examples = [(request_pieces(model.tokenizer, item, settings, item.context),
                 target_ids(model.tokenizer, targets[item.id])) for item in items]
    per_step = train_settings.batch_size * train_settings.grad_accum
    total_steps = max(1, math.ceil(len(examples) * train_settings.epochs / per_step))
    if max_steps:
        total_steps = min(total_steps, max_steps)
    calibration = model.calibrate([pieces for pieces, _ in examples[:64]])
    groups = model.trainable()
    optimizer = torch.optim.AdamW(
        [{"params": groups["generator"], "lr": train_settings.lr},
         {"params": groups["compressor"], "lr": train_settings.compressor_lr}],
        weight_decay=train_settings.weight_decay)
    warmup = math.ceil(train_settings.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    order = _order(len(examples), total_steps * per_step, train_settings.seed)
    recorded = {"settings": asdict(settings), "train": asdict(train_settings), "n_items": len(examples),
                "total_steps": total_steps}
    step = 0
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["recorded"] != recorded:
            raise UsageError(f"{checkpoint} is from a run with other settings or data; "
                             "use another --output-dir, or delete the checkpoint to start over")
        model.load_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        print(f"resuming from step {step} of {total_steps} ({checkpoint})")
    model.train()
    train_seconds = 0.0
    with AppendLog(out_dir / TRAIN_LOG) as log, tqdm(total=total_steps, initial=step, desc="soft compression",
                                                    unit="step", disable=not progress) as bar:
        while step < total_steps:
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for micro in range(train_settings.grad_accum):
                start = (step * train_settings.grad_accum + micro) * train_settings.batch_size
                batch = [examples[i] for i in order[start:start + train_settings.batch_size]]
                loss = model.loss(batch) / train_settings.grad_accum
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_([p for g in groups.values() for p in g], train_settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            train_seconds += time.perf_counter() - tick
            log.append({"step": step, "loss": round(total, 5), "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.perf_counter() - tick, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}")
            if step % train_settings.save_every == 0 and step < total_steps:
                _save_checkpoint(checkpoint, model, optimizer, scheduler, step, recorded)
    model.eval()
    model.save(out_dir)
    checkpoint.unlink(missing_ok=True)
    losses = [record["loss"] for record in read_jsonl(out_dir / TRAIN_LOG, what="training log")]
    summary = {"steps": total_steps, "examples": len(examples), "teacher_seconds": round(teacher_seconds, 1),
               "calibration": calibration,
               "train_seconds": round(train_seconds, 1), "first_loss": losses[0] if losses else None,
               "last_loss": (sum(losses[-10:]) / len(losses[-10:])) if losses else None}
    write_json_atomic(out_dir / "train_summary.json", {**summary, **recorded})
    return summary


def _order(n: int, needed: int, seed: int) -> list[int]:
    """Example indices for `needed` draws: shuffled epochs, one after another."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < needed:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order += epoch
    return order[:needed]


def _save_checkpoint(path: Path, model: SoftModel, optimizer, scheduler, step: int, recorded: dict) -> None:
    torch = _torch()
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": model.state(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "recorded": recorded}, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalSettings:
    conditions: tuple[str, ...] = ("question", "text", "soft")
    max_answer_tokens: int = 16
    batch_size: int = 16
    latency_probe: int = 16  # requests timed one at a time per condition
    grading_timeout: float = 5.0
    hard_ratio: float | None = None


def context_for(item: Item, condition: str) -> str | None:
    if condition == "question":
        return None
    if condition in ("hard", "hybrid"):
        return item.hard_context
    return item.context


def evaluate(model: SoftModel, items: Sequence[Item], *, settings: EvalSettings, out_dir: Path,
             model_dir: str, progress: bool = True) -> dict:
    """Accuracy, context positions and latency of each condition on `items`; writes
    predictions_{condition}.jsonl and metrics.json into `out_dir` and returns the metrics."""
    from tokenskip.grading import Grader, GradeRequest

    model.eval()
    missing_hard = [c for c in settings.conditions if c in ("hard", "hybrid")] if any(
        item.hard_context is None for item in items) else []
    if missing_hard:
        raise UsageError(f"conditions {', '.join(missing_hard)} need hard-compressed CoTs: give a stage-2 ratio file "
                         "as --input, or --hard-ratio to compress here")
    results = {}
    with Grader(timeout=settings.grading_timeout) as grader:
        for condition in settings.conditions:
            requests = [request_pieces(model.tokenizer, item, model.settings, context_for(item, condition))
                        for item in items]
            tick = time.perf_counter()
            answers = generate_answers(model, requests, condition=condition, max_new_tokens=settings.max_answer_tokens,
                                       batch_size=settings.batch_size,
                                       desc=f"{condition} ({len(items)} questions)" if progress else None)
            batch_seconds = time.perf_counter() - tick
            grades = grader.grade(GradeRequest(model_output=pieces.cue_text + answer, reference=item.answer,
                                               question=item.question, answer_format=item.answer_format)
                                  for item, pieces, answer in zip(items, requests, answers))
            soft = condition in ("soft", "hybrid")
            positions = [soft_positions(len(p.context), model.settings) if soft else len(p.context) for p in requests]
            records = [{"id": item.id, "condition": condition, "question": item.question, "answer": item.answer,
                        "model_answer": answer, "prediction": grade.prediction, "accuracy": grade.correct,
                        "context_positions": n, "prompt_positions": len(p.prefix) + n + len(p.cue)}
                       for item, p, answer, grade, n in zip(items, requests, answers, grades, positions)]
            write_jsonl_atomic(out_dir / f"predictions_{condition}.jsonl", records)
            latency = probe_latency(model, requests[: settings.latency_probe], condition, settings.max_answer_tokens)
            results[condition] = {
                "name": CONDITION_NAMES[condition],
                "accuracy": sum(r["accuracy"] for r in records) / len(records),
                "n": len(records),
                "context_positions": sum(positions) / len(positions),
                "prompt_positions": sum(r["prompt_positions"] for r in records) / len(records),
                "batched_seconds": round(batch_seconds, 3),
                **latency,
            }
    metrics = metrics_of(results, model, model_dir, settings, len(items))
    write_json_atomic(out_dir / layout.METRICS, metrics)
    return metrics


def probe_latency(model: SoftModel, requests: Sequence[Pieces], condition: str, max_new_tokens: int) -> dict:
    """Per-request times, one request at a time: compression (soft conditions), prefill (one
    forward over the input) and the whole request (compression + generation), in milliseconds."""
    torch = _torch()
    if not requests:
        return {}
    soft = condition in ("soft", "hybrid")
    compress_ms, prefill_ms, total_ms = [], [], []
    with torch.no_grad(), model.reading(soft):
        for pieces in requests:
            tick = time.perf_counter()
            vectors = model.compress([pieces])[0] if soft else None
            row = model.request_embeddings(pieces, vectors, with_context=condition != "question")
            compressed = time.perf_counter()
            boxed = pieces.cue_text.endswith("\\boxed{")
            model.generate([row], max_new_tokens=max_new_tokens, stop_at_brace=boxed)
            total_ms.append((time.perf_counter() - tick) * 1000)
            compress_ms.append((compressed - tick) * 1000)
            tick = time.perf_counter()
            model.prefill(row)
            prefill_ms.append((time.perf_counter() - tick) * 1000)
    mean = lambda values: round(sum(values) / len(values), 2)  # noqa: E731
    return {"n_probe": len(requests), "compress_ms": mean(compress_ms) if soft else 0.0,
            "prefill_ms": mean(prefill_ms), "latency_ms": mean(total_ms)}


def metrics_of(results: dict, model: SoftModel, model_dir: str, settings: EvalSettings, n_eval: int) -> dict:
    """metrics.json: one entry per condition, and the headline numbers the bench reports."""
    get = lambda condition, key: results.get(condition, {}).get(key)  # noqa: E731
    acc_q, acc_text, acc_soft = get("question", "accuracy"), get("text", "accuracy"), get("soft", "accuracy")
    gap = (acc_text - acc_q) if acc_q is not None and acc_text is not None else None
    recovered = (acc_soft - acc_q) / gap if gap and acc_soft is not None else None
    text_pos, soft_pos = get("text", "context_positions"), get("soft", "context_positions")
    return {
        "stage": METRICS_KIND,
        "model_dir": model_dir,
        "base_model": model.settings.base_model,
        "settings": asdict(model.settings),
        "eval": asdict(settings),
        "n_eval": n_eval,
        "conditions": results,
        "acc_question_only": acc_q,
        "acc_text": acc_text,
        "acc_soft": acc_soft,
        "acc_hard": get("hard", "accuracy"),
        "acc_hybrid": get("hybrid", "accuracy"),
        "gap_recovered": recovered,
        "positions_text": text_pos,
        "positions_soft": soft_pos,
        "position_ratio": (text_pos / soft_pos) if text_pos and soft_pos else None,
        "prefill_ms_text": get("text", "prefill_ms"),
        "prefill_ms_soft": get("soft", "prefill_ms"),
    }


def with_hard_contexts(items: Sequence[Item], *, ratio: float, method: str, model_path: str, device: str,
                       progress: bool = True) -> list[Item]:
    """The items with their CoTs hard-compressed at `ratio` by a stage-2 scorer (cts reads with
    `model_path` as its reference model; llmlingua2 and ner with it as their classifier)."""
    from tokenskip.scorers import CoT, scorer_class

    scorer_type = scorer_class(method)
    try:
        scorer = scorer_type(model_path, device=device, progress=progress)
    except TypeError:
        scorer = scorer_type(model_path, device=device)
    scorer.check_ratios([ratio])
    compressed = scorer.compress([CoT(item.context, item.question, item.answer) for item in items], [ratio])
    return [replace(item, hard_context=texts[ratio]) for item, texts in zip(items, compressed)]

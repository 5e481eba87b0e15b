"""The torch model: the compressor (the generator's first N layers), the memory tokens and scale,
and the generator with its LoRA; loading, saving, compressing, generating."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.items import GeneratorInput, Pieces, Soft, answer_of, blocks_of
from tokenskip.compression.soft.settings import (
    COMPRESSOR_DIR,
    FORMAT_VERSION,
    GENERATOR_ADAPTER_DIR,
    MEMORY_FILE,
    SETTINGS_FILE,
    SoftSettings,
    read_settings,
)
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import write_json_atomic


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
    compressor (the first N layers), the memory embeddings and the output scale.

    Its state is its weights, and two calls change them, each by name: `fit_output_map` sets the
    output scale from data (once, before training; it is saved with the model), and
    `adapter_set_for` merges the generator's adapter (soft conditions) or turns it off (text) for
    the length of a `with` block, and puts it back as it was when the block ends. Every other call
    takes what it works on and returns what it made."""

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
        # the output map: row 0 the centre, row 1 the gain (`fit_output_map` sets both from data)
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

    def fit_output_map(self, requests: Sequence[Pieces]) -> dict:
        """Set the output map (a weight: this changes the model) so that these requests' memory states
        come out centred, each dimension at the spread of the generator's token embeddings; returns
        what it saw (for the log)."""
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
                           target: Sequence[int] = ()) -> GeneratorInput:
        """One request's input embeddings: prompt, then the soft context (or the text context's
        token embeddings, or nothing), then the cue and, in training, the target."""
        torch = _torch()
        parts = [self.embed(pieces.prefix)]
        if soft is not None:
            parts.append(soft.inputs)
        elif with_context and pieces.context:
            parts.append(self.embed(pieces.context))
        parts.append(self.embed(list(pieces.cue) + list(target)))
        return GeneratorInput(torch.cat(parts), soft, len(pieces.prefix))

    def batch(self, rows: Sequence[GeneratorInput], labels: list | None = None):
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
    def adapter_set_for(self, soft: bool):
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

    def generate(self, rows: Sequence[GeneratorInput], *, max_new_tokens: int,
                 stop_at_brace: bool = True) -> list[list[int]]:
        """Greedy answers for a batch of request embeddings (inside `adapter_set_for`); with `stop_at_brace`
        a row stops where its box closes."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        from tokenskip.models.loading import stop_token_ids

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

    def prefill(self, row: GeneratorInput) -> None:
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
    from tokenskip.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

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

    from tokenskip.core.errors import first_line
    from tokenskip.models.loading import DOWNLOAD_HINT

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





def generate_answers(model: SoftModel, requests: Sequence[Pieces], *, condition: str, max_new_tokens: int,
                     batch_size: int, desc: str | None = None) -> list[str]:
    """Greedy answers under one condition (see CONDITIONS), in batches, texts cut where the answer ends."""
    from tqdm.auto import tqdm

    torch = _torch()
    # batches of similar lengths waste less on padding; answers go back in the requests' order
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].prefix) + len(requests[i].context))
    answers: dict[int, str] = {}
    soft = condition in ("soft", "hybrid")
    with torch.no_grad(), model.adapter_set_for(soft):
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

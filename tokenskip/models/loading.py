"""Loading models, tokenizers and adapters, with one-line errors for the usual mistakes."""

from __future__ import annotations

import json
from pathlib import Path

from tokenskip.core.errors import UsageError, first_line

DOWNLOAD_HINT = "download it with `python download_models.py` (or `python download_models.py --embedded` offline)"
# Turn-ending markers of the chat formats we prompt with; generation stops at any of them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>")


def looks_like_hub_id(name: str) -> bool:
    """`org/name`: one slash and no path start. The shape only; whether the hub has it is another matter."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def resolve_model_path(path: str, flag: str = "--model-path") -> str:
    """A local folder, or a hub id (`org/name`) when no such local folder could be meant."""
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if looks_like_hub_id(path) and not local.parent.is_dir():  # `models/X` with models/ here means a folder
        return path
    raise UsageError(f"{flag} {path} does not exist; {DOWNLOAD_HINT}")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    """float32 on CPU; bf16 on GPUs that support it, else fp16 — unless asked otherwise."""
    import torch

    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise UsageError(f"--dtype {dtype} is not one of auto, {', '.join(choices)}")
    return choices[dtype]


def dtype_name(dtype) -> str:
    """A torch dtype as vLLM and the run files spell it ("float32", "bfloat16", "float16")."""
    return str(dtype).removeprefix("torch.")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not load a tokenizer from {path} ({first_line(exc)}); {DOWNLOAD_HINT}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer) -> list[int]:
    """The tokenizer's eos plus every chat end-of-turn marker it knows as a single token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in END_OF_TURN_TOKENS if token in vocab]
    return sorted(set(ids))


def check_adapter(path: str | None) -> dict:
    """The adapter's `adapter_config.json`, or a one-line error if `path` is not a LoRA folder."""
    if not path:
        raise UsageError("--use_adapter needs --adapter-path pointing at a LoRA adapter folder")
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise UsageError(
            f"--adapter-path {path} is not a LoRA adapter folder (no adapter_config.json); "
            "train one (configs/examples/train_lora) or download one with `python download_models.py --adapters-only`"
        )
    return json.loads(config_file.read_text())


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_sha256(path: str) -> str:
    """The adapter's identity: a SHA-256 over its config and weights files (names and bytes), so that a
    table can tell two adapters apart whatever folder they sit in, and a retrained adapter from the old one."""
    import hashlib

    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode() + b"\0")
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def saved_embedding_rows(adapter_path: str) -> int | None:
    """The rows of the input embeddings an adapter saved whole (modules_to_save: trained added tokens), if any."""
    weights = Path(adapter_path) / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        rows = [handle.get_slice(key).get_shape()[0] for key in handle.keys() if "embed_tokens" in key]
    return max(rows) if rows else None


def load_causal_lm(path: str, *, device: str, dtype, adapter_path: str | None = None,
                   attn_implementation: str | None = None, vocab_size: int | None = None):
    """A causal LM in eval mode on `device`, with a LoRA adapter merged in for speed.

    `attn_implementation` is a preference: a model that does not support it loads with its default.
    `vocab_size`: the tokenizer's length; an adapter trained with added tokens (LLaMA-Factory's resize_vocab,
    --ratio-format token) needs the embeddings resized to it before its saved embedding layers load.
    """
    from transformers import AutoModelForCausalLM

    options = {"dtype": dtype, "trust_remote_code": True}
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation, **options)
        except ValueError:
            if attn_implementation is None:
                raise
            model = AutoModelForCausalLM.from_pretrained(path, **options)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not load a causal LM from {path} ({first_line(exc)}); {DOWNLOAD_HINT}") from None
    if adapter_path:
        from peft import PeftModel

        rows = saved_embedding_rows(adapter_path)
        if vocab_size and rows and rows > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(rows)  # the adapter's own size (LLaMA-Factory pads to a multiple of 64)

        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    return model.to(device).eval()


def context_length(path: str) -> int | None:
    """The model's context window from its config.json (`max_position_embeddings` and kin), or None
    when the config does not say (or is not local: a hub id is not fetched just for this)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None

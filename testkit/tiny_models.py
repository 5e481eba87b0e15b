"""Tiny random-weight models for the tests: real code paths, millisecond steps."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(folder: Path, tokenizer, *, max_positions: int = 2048, seed: int = 0,
                    init_std: float = 0.02) -> Path:
    """A 2-layer random-weight Llama sized to `tokenizer`, saved with it into `folder`. At the default weight scale
    its greedy text is one token repeated; a larger `init_std` gives varied tokens (uneven answers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                         initializer_range=init_std)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def greedy_alone(model, prompt_ids: list[int], steps: int, stops) -> list[int]:
    """Greedy tokens of one prompt with no batch around it: a full forward over the whole text per token, up to and
    including the first of `stops`. The reference that batched decoding must reproduce."""
    import torch

    ids, new = torch.tensor([prompt_ids]), []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(model(ids).logits[0, -1].argmax())
            new.append(token)
            if token in stops:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new

"""transformers backend: batched, left-padded generation that runs on a CPU or a GPU."""

from __future__ import annotations

import torch

from tokenskip.backends import Completion, DecodingSettings
from tokenskip.modeling import load_causal_lm, stop_token_ids


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, tokenizer, *, settings: DecodingSettings, batch_size: int,
                 device: str, dtype, adapter_path: str | None = None):
        from transformers import GenerationConfig

        self.tokenizer = tokenizer
        self.settings = settings
        self.chunk_size = batch_size
        self.device = device
        self.model = load_causal_lm(model_path, device=device, dtype=dtype, adapter_path=adapter_path)
        self.stop_ids = stop_token_ids(tokenizer)
        # A fresh config: the model's own may carry sampling defaults or a repetition penalty
        # that would silently change "greedy" decoding.
        sampling = settings.temperature > 0
        self.generation_config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampling,
            temperature=settings.temperature if sampling else None,
            top_p=settings.top_p if sampling else None,
            top_k=0 if sampling else None,
            repetition_penalty=1.0,
            eos_token_id=self.stop_ids,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        self.model.generation_config = self.generation_config

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[Completion]:
        if self.settings.temperature > 0:
            torch.manual_seed(self.settings.seed)
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        output = self.model.generate(**batch, generation_config=self.generation_config)
        new_tokens = output[:, batch.input_ids.shape[1]:].tolist()
        return [self._completion(tokens) for tokens in new_tokens]

    def _completion(self, tokens: list[int]) -> Completion:
        end = next((i + 1 for i, token in enumerate(tokens) if token in self.stop_ids), len(tokens))
        text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        return Completion(text=text, n_tokens=end)

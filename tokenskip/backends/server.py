"""Served models: any OpenAI-compatible completions endpoint (`vllm serve`, SGLang, TGI).

The toolkit builds the prompts as for the other backends and sends them to `/v1/completions` as
token ids (default: exactly the ids the offline backends feed their model, so no server-side chat
template or second BOS can creep in) or as text. The LoRA adapter is the server's: requests name it
by its served name (`vllm serve --enable-lora --lora-modules NAME=PATH`). Requests run a bounded
number at a time; the OpenAI client retries connection errors, 408/429 and 5xx answers with
exponential backoff; each request's latency is measured here, from sending it to its answer.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor

from tokenskip.backends import Completion, DecodingSettings, request_seed
from tokenskip.core.errors import UsageError, first_line
from tokenskip.models.loading import stop_token_ids

PROMPT_FORMATS = ("ids", "text")
LATENCY_BASIS = "client: request sent to answer received"
CHUNK_SIZE = 64  # prompts handed over per call: each finished chunk reaches the disk


class ServerBackend:
    name = "server"
    latency_basis = LATENCY_BASIS
    dtype = "served"  # the server's choice; the client cannot see it

    def __init__(self, url: str, tokenizer, *, settings: DecodingSettings, model: str | None = None,
                 adapter: str | None = None, concurrency: int = 16, prompt_format: str = "ids",
                 timeout: float = 600.0, retries: int = 4, chunk_size: int | None = None):
        from openai import OpenAI

        self.url = url
        self.tokenizer = tokenizer
        self.settings = settings
        self.concurrency = concurrency
        self.prompt_format = prompt_format
        self.chunk_size = chunk_size or CHUNK_SIZE
        self.stop_ids = stop_token_ids(tokenizer)
        # servers started without --api-key accept any key; the client insists on one
        self.client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             max_retries=retries, timeout=timeout)
        self.base_model, self.adapter = self._check_models(model, adapter)
        self.model = self.adapter or self.base_model

    def _check_models(self, model: str | None, adapter: str | None) -> tuple[str, str | None]:
        """The served base model and adapter, checked against the server's /v1/models."""
        served = self._call(lambda: list(self.client.models.list()))
        names = [entry.id for entry in served]
        # vLLM lists its LoRA modules with the base model as `parent`
        bases = [entry.id for entry in served if not (entry.model_extra or {}).get("parent")]
        if model is None:
            if len(bases) != 1:
                raise UsageError(f"the server at {self.url} serves {', '.join(names) or 'no model'}; "
                                 "name the base model with --served-model")
            model = bases[0]
        for name, flag in ((model, "--served-model"), (adapter, "--served-adapter")):
            if name is not None and name not in names:
                raise UsageError(f"{flag} {name} is not served at {self.url} (it serves {', '.join(names)})")
        return model, adapter

    def _call(self, request):
        import openai

        try:
            return request()
        except openai.APIConnectionError as exc:
            raise UsageError(f"cannot reach the server at {self.url} ({first_line(exc.__cause__ or exc)}): "
                             "is it running? check --server-url") from None
        except openai.APIStatusError as exc:
            raise UsageError(f"the server at {self.url} refused a request: {exc.status_code} "
                             f"{first_line(exc.message)}") from None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def without_adapter(self) -> ServerBackend:
        """The same server, answering with the base model."""
        view = copy.copy(self)
        view.model = self.base_model
        return view

    def generate(self, prompts: list[str], max_new_tokens: int | None = None,
                 ids: list[str] | None = None) -> list[Completion]:
        budget = int(max_new_tokens or self.settings.max_new_tokens)
        ids = ids if ids is not None else [str(i) for i in range(len(prompts))]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda prompt, request: self._complete(prompt, request, budget), prompts, ids))

    def _complete(self, prompt: str, request_id: str, budget: int) -> Completion:
        extra = {"stop_token_ids": self.stop_ids, "skip_special_tokens": True, "repetition_penalty": 1.0}
        if self.prompt_format == "ids":
            body = self.tokenizer(prompt, add_special_tokens=False).input_ids
        else:
            body, extra["add_special_tokens"] = prompt, False  # the prompt carries its own BOS
        start = time.perf_counter()
        answer = self._call(lambda: self.client.completions.create(
            model=self.model, prompt=body, max_tokens=budget, temperature=self.settings.temperature,
            top_p=self.settings.top_p, seed=request_seed(self.settings.seed, request_id), extra_body=extra))
        latency = time.perf_counter() - start
        choice = answer.choices[0]
        tokens = answer.usage.completion_tokens if answer.usage else self.count_tokens(choice.text)
        return Completion(text=choice.text, n_tokens=tokens, capped=choice.finish_reason == "length",
                          latency_s=latency)

    def close(self) -> None:
        self.client.close()

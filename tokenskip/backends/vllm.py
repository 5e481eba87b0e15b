"""vLLM backend for GPU machines. vLLM is imported only here, only when this backend is chosen."""

from __future__ import annotations

from tokenskip.backends import Completion, DecodingSettings
from tokenskip.modeling import stop_token_ids

# vLLM schedules its own batches; we hand it this many prompts at a time so that finished
# answers reach the disk (and a killed run loses little) without starving its scheduler.
CHUNK_SIZE = 512
# LoRA ranks vLLM accepts for `max_lora_rank`.
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


# room left for the prompt when vLLM's context is sized from --max_new_tokens
PROMPT_ROOM = 4096


def max_model_len(max_new_tokens: int, context: int | None) -> int | None:
    """vLLM's `max_model_len`: what the run needs (the generation budget plus room for the prompt),
    never more than the model's own context. Left to vLLM (the model's full context, 128k tokens for
    R1-distill) it may not fit the KV cache, and vLLM refuses to start; sized to the run it does."""
    wanted = max_new_tokens + PROMPT_ROOM
    return min(wanted, context) if context else wanted


def lora_rank_limit(adapter_rank: int) -> int:
    return next((rank for rank in SUPPORTED_LORA_RANKS if rank >= adapter_rank), adapter_rank)


class VLLMBackend:
    name = "vllm"
    chunk_size = CHUNK_SIZE

    def __init__(self, model_path: str, tokenizer, *, settings: DecodingSettings, tensor_parallel_size: int,
                 dtype: str, adapter_path: str | None = None, adapter_rank: int = 8, context: int | None = None):
        from vllm import LLM, SamplingParams

        self.tokenizer = tokenizer
        lora_options = {"enable_lora": True, "max_lora_rank": lora_rank_limit(adapter_rank)} if adapter_path else {}
        self.llm = LLM(
            model=model_path,
            tokenizer=tokenizer.name_or_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=settings.seed,
            trust_remote_code=True,
            generation_config="vllm",  # ignore the model's sampling defaults, as the hf backend does
            max_model_len=max_model_len(settings.max_new_tokens, context),
            **lora_options,
        )
        self.settings = settings
        self.make_sampling_params = SamplingParams
        self.stop_ids = stop_token_ids(tokenizer)
        self.lora_request = None
        if adapter_path:
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("tokenskip", 1, adapter_path)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[Completion]:
        # Token ids, not strings: vLLM would add a second BOS to prompts that carry their own.
        inputs = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False).input_ids} for p in prompts]
        # vLLM returns the outputs in the order of the inputs.
        params = self.make_sampling_params(
            max_tokens=int(max_new_tokens or self.settings.max_new_tokens),
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            seed=self.settings.seed,
            repetition_penalty=1.0,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        return [Completion(text=o.outputs[0].text, n_tokens=len(o.outputs[0].token_ids),
                           capped=getattr(o.outputs[0], "finish_reason", None) == "length",
                           latency_s=request_latency(o))
                for o in outputs]


def request_latency(output) -> float | None:
    """Arrival to finish of one request, from the timings vLLM keeps on its RequestOutput
    (`metrics`: arrival_time, first_token_time, finished_time or last_token_time); None when
    this vLLM version reports none. All prompts of a call arrive together, so this is the time one
    request takes while the others share the GPU, as a server under that load would see it."""
    metrics = getattr(output, "metrics", None)
    arrival = getattr(metrics, "arrival_time", None)
    finished = getattr(metrics, "finished_time", None) or getattr(metrics, "last_token_time", None)
    if arrival is None or finished is None or finished < arrival:
        return None
    return float(finished - arrival)

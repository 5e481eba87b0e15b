"""Generation speed: this project's transformers backend against the original TokenSkip HF loop.

The baseline re-implements what the original `evaluation.py` did with transformers: batches in
file order, padded to the longest prompt, `model.generate` with a stopping criterion that decodes
every sequence's tail at every step and stops the batch only when every sequence has hit eos,
then decoding the whole batch and cutting the prompt off by its decoded length. Both run the
same model on the same prompts in the same process; the texts must be identical.

    python bench/bench_generation.py [--n 32] [--batch-size 16] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.backends import DecodingSettings  # noqa: E402
from tokenskip.backends.hf import HFBackend  # noqa: E402
from tokenskip.models import embedded  # noqa: E402
from tokenskip.models.loading import load_tokenizer  # noqa: E402
from tokenskip.prompting.prompts import build_prompt  # noqa: E402

GSM8K_TEST = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


class AllSequencesHitStop:
    """The original's stopping criterion: decode windows of each sequence's tail, every step."""

    def __init__(self, stop_ids: list[int], tokenizer, prompt_length: int):
        self.stop_ids, self.tokenizer, self.prompt_length = stop_ids, tokenizer, prompt_length
        self.stop_text = tokenizer.decode(stop_ids)

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        stopped = []
        for row in input_ids:
            ids = row[self.prompt_length:].tolist()
            found = any(self.tokenizer.decode(ids[max(j - len(self.stop_ids) - 3, 0):j]).endswith(self.stop_text)
                        for j in range(len(ids), 0, -1))
            stopped.append(found)
        return all(stopped)


@torch.inference_mode()
def original_loop(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                  decode_every_step: bool = True) -> list[str]:
    """`decode_every_step=False` leaves the original's stopping criterion out: plain `generate`."""
    from transformers import StoppingCriteriaList

    eos = tokenizer.eos_token_id
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], padding="longest", return_tensors="pt",
                          add_special_tokens=False)
        criteria = [AllSequencesHitStop([eos], tokenizer, batch.input_ids.shape[1])] if decode_every_step else []
        output = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                max_new_tokens=max_new_tokens, do_sample=False, top_p=1.0,
                                stopping_criteria=StoppingCriteriaList(criteria), pad_token_id=eos, use_cache=True)
        for row in range(output.shape[0]):  # blank everything from the first stop token on
            for position in range(batch.input_ids.shape[1], output.shape[1]):
                if output[row, position] == eos:
                    output[row, position:] = tokenizer.pad_token_id
                    break
        decoded = tokenizer.batch_decode(output, skip_special_tokens=True)
        decoded_prompts = tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True)
        texts += [full[len(prompt):] for prompt, full in zip(decoded_prompts, decoded)]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    if not GSM8K_TEST.is_file():
        sys.exit(f"skipped: {GSM8K_TEST} is absent")

    model_dir = str(embedded.materialize(ROOT / "models"))
    tokenizer = load_tokenizer(model_dir)
    questions = [json.loads(line)["question"] for line in GSM8K_TEST.read_text().splitlines()[:args.n]]
    prompts = [build_prompt(q, model_type="qwen") for q in questions]
    settings = DecodingSettings(max_new_tokens=args.max_new_tokens)
    backend = HFBackend(model_dir, tokenizer, settings=settings, batch_size=args.batch_size, device="cpu",
                        dtype=torch.float32)

    start = time.perf_counter()
    order = sorted(range(len(prompts)), key=lambda i: -backend.count_tokens(prompts[i]))
    ours: dict[int, object] = {}
    for first in range(0, len(order), args.batch_size):
        batch = order[first:first + args.batch_size]
        ours.update(zip(batch, backend.generate([prompts[i] for i in batch])))
    ours_seconds = time.perf_counter() - start

    from transformers import AutoModelForCausalLM

    baseline_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start = time.perf_counter()
    baseline = original_loop(baseline_model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
    baseline_seconds = time.perf_counter() - start
    start = time.perf_counter()
    plain = original_loop(baseline_model, tokenizer, prompts, args.batch_size, args.max_new_tokens,
                          decode_every_step=False)
    plain_seconds = time.perf_counter() - start

    tokens = sum(completion.n_tokens for completion in ours.values())
    same = sum(ours[i].text == baseline[i] for i in range(len(prompts)))
    print(f"questions {len(prompts)}, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
          f"generated tokens {tokens}, torch threads {torch.get_num_threads()}")
    print(f"original loop           : {baseline_seconds:7.1f} s  {tokens / baseline_seconds:6.1f} tok/s")
    print(f"plain generate, no sort : {plain_seconds:7.1f} s  {tokens / plain_seconds:6.1f} tok/s  "
          f"(identical texts: {sum(p == b for p, b in zip(plain, baseline))}/{len(prompts)})")
    print(f"tokenskip hf            : {ours_seconds:7.1f} s  {tokens / ours_seconds:6.1f} tok/s")
    print(f"speed-up vs original    : {baseline_seconds / ours_seconds:.2f}x; identical texts: {same}/{len(prompts)}")
    print(f"speed-up vs plain       : {plain_seconds / ours_seconds:.2f}x")
    for i in range(len(prompts)):
        if ours[i].text != baseline[i]:
            prefix = next((k for k, (a, b) in enumerate(zip(ours[i].text, baseline[i])) if a != b),
                          min(len(ours[i].text), len(baseline[i])))
            print(f"  question {i} differs from character {prefix}")


if __name__ == "__main__":
    main()

"""Soft compression's easiest case: can the generator read a number back from its soft context?

A diagnostic for bench_soft_compression.py. Each context is one sentence, "The notes say that the
total is N." (N a seeded random integer in 1..999), so it is one block and one memory embedding;
the question asks for the number and the target is the number itself (gold). The generator (the
embedded SmolLM2-135M-Instruct) reads the text and copies N every time; the question is whether
`--steps` batches of 8 teach the compressor and the generator's adapter to pass N through the
soft embedding. Prints the loss every 10 steps, then the accuracy on 60 new sentences for the soft
and the text contexts, with the first answers.

    .venv/bin/python bench/bench_soft_copy.py [--inject input|layer] [--steps 60] [--lr 5e-4]
        [--compressor-lr 2e-4] [--no-calibrate]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.compression.soft.items import Item, request_pieces  # noqa: E402
from tokenskip.compression.soft.model import SoftModel, generate_answers  # noqa: E402
from tokenskip.compression.soft.settings import SoftSettings  # noqa: E402
from tokenskip.compression.soft.train import target_ids  # noqa: E402
from tokenskip.models import embedded  # noqa: E402


def sentences(n: int, rng: random.Random, start: int = 0) -> list[Item]:
    items = []
    for i in range(n):
        number = rng.randint(1, 999)
        items.append(Item(id=str(start + i), question="What number do the notes end with?",
                             context=f"The notes say that the total is {number}.", answer=str(number)))
    return items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inject", choices=("input", "layer"), default="input")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--compressor-lr", type=float, default=2e-4)
    parser.add_argument("--no-calibrate", action="store_true", help="leave the output map at the identity")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    train, test = sentences(args.steps * 8, rng), sentences(60, rng, start=10_000)
    model_dir = embedded.default_dir(ROOT / "models")
    if not embedded.is_materialized(model_dir):
        embedded.materialize(ROOT / "models")
    settings = SoftSettings(base_model=str(model_dir), n_layers=5, prompt_format="chat", inject=args.inject)
    model = SoftModel.create(settings, device="cpu", dtype=torch.bfloat16)
    if not args.no_calibrate:
        print("calibration:", model.fit_output_map([request_pieces(model.tokenizer, it, settings, it.context)
                                               for it in train[:64]]))
    groups = model.trainable()
    optimizer = torch.optim.AdamW([{"params": groups["generator"], "lr": args.lr},
                                   {"params": groups["compressor"], "lr": args.compressor_lr}], weight_decay=0.1)
    examples = [(request_pieces(model.tokenizer, it, settings, it.context),
                 target_ids(model.tokenizer, it.answer + "}")) for it in train]
    model.train()
    started = time.perf_counter()
    for step in range(args.steps):
        loss = model.loss(examples[8 * step: 8 * step + 8])
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in groups.values() for p in group], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    requests = [request_pieces(model.tokenizer, it, settings, it.context) for it in test]
    for condition in ("soft", "text"):
        answers = generate_answers(model, requests, condition=condition, max_new_tokens=6, batch_size=20)
        accuracy = sum(a.rstrip("}") == it.answer for a, it in zip(answers, test)) / len(test)
        print(f"{args.inject} {condition}: accuracy {accuracy:.3f} on {len(test)}; first answers {answers[:5]} "
              f"(gold {[it.answer for it in test[:5]]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

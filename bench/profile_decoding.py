"""Where a decoding step of the transformers backend's continuous batching spends its time, against the
estimated limit of the machine: one run, the embedded SmolLM2-135M-Instruct, fp32, greedy, every slot busy.

The step is profiled with torch.profiler while `slots` requests decode together (prefill excluded: only model
forwards of one new token per row count). Each operator's own time (self CPU time) goes to one part:
- matmul: the projections, the MLP and the LM head (aten::mm / addmm / bmm), with the GFLOP/s they reach;
- attention: scaled_dot_product_attention and what runs inside it;
- cache: the slot cache's writes and views (SlotLayer.update);
- other kernels: RMSNorm, rotary embedding, SiLU, residual adds, argmax, the mask;
- Python and dispatch: the step's wall time that no operator accounts for (module calls, transformers' glue,
  the profiler's own cost, which is why the step's wall time is also measured without the profiler).
The limit per step is the larger of compute (2 x parameters x rows FLOP at the peak) and memory (weights and the
attended cache read once at the bandwidth). Both are measured here unless given: the peak as the rate of one
large fp32 matrix product (what the prefill's products approach), the bandwidth as a plain copy of 512 MB.

    python bench/profile_decoding.py [--slots 16 32 48] [--context 96] [--steps 48]
                                     [--json bench/results/decoding_profile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.backends import DecodingSettings  # noqa: E402
from tokenskip.backends import slots as slot_module  # noqa: E402
from tokenskip.backends.hf import HFBackend  # noqa: E402
from tokenskip.models import embedded  # noqa: E402

MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
PARTS = ("matmul", "attention", "cache", "other kernels", "Python and dispatch")


def part_of(event) -> str:
    """The part an operator's own time belongs to: by the nearest labelled ancestor, else by its name."""
    node = event
    while node is not None:
        if node.name == "tokenskip::cache":
            return "cache"
        if "scaled_dot_product" in node.name:
            return "attention"
        node = node.cpu_parent
    return "matmul" if event.name in MATMUL else "other kernels"


def within_step(event) -> bool:
    node = event.cpu_parent
    while node is not None:
        if node.name == "tokenskip::step":
            return True
        node = node.cpu_parent
    return False


def instrument(model) -> dict:
    """Time every forward (one-token forwards are steps, longer ones prefill) and label steps and the slot
    cache's update for the profiler (a range costs microseconds when no profiler runs)."""
    forward = model.forward
    clock = {"step": [0, 0.0], "prefill": [0, 0.0]}

    def labelled(*args, **kwargs):
        ids = kwargs.get("input_ids")
        kind = "step" if ids is not None and ids.shape[1] == 1 else "prefill"
        started = time.perf_counter()
        if kind == "step":
            with torch.profiler.record_function("tokenskip::step"):
                result = forward(*args, **kwargs)
        else:
            result = forward(*args, **kwargs)
        clock[kind][0] += 1
        clock[kind][1] += time.perf_counter() - started
        return result

    model.forward = labelled
    update = slot_module.SlotLayer.update

    def cache_update(self, *args, **kwargs):
        with torch.profiler.record_function("tokenskip::cache"):
            return update(self, *args, **kwargs)

    slot_module.SlotLayer.update = cache_update
    return clock


def prompts_of(tokenizer, count: int, context: int) -> list[list[int]]:
    """`count` distinct prompts of `context` tokens (chat turns over GSM8K-like text): every slot's attention
    spans about what an evaluation's does at mid-answer."""
    filler = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
              "How many clips did Natalia sell altogether in April and May? ")
    prompts = []
    for i in range(count):
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"Question {i}. " + filler * 8}],
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        prompts.append(ids[-context:])
    return prompts


def measured_peak_gflops() -> float:
    """The rate of a large fp32 matrix product on these cores (the best of a few)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def measured_bandwidth_gbs() -> float:
    """A plain copy's rate (bytes read + written), as bench/README.md measured it."""
    source = torch.empty(128 * 2 ** 20)  # 512 MB of fp32
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source)) for _ in range(5))
    return 2 * source.numel() * 4 / best / 1e9


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def parameters(model) -> tuple[int, int]:
    """Parameters a step multiplies by (the LM head once, tied or not) and the bytes of weights it reads."""
    config = model.config.get_text_config()
    body = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    head = config.vocab_size * config.hidden_size
    tied = getattr(config, "tie_word_embeddings", False)
    return body + (head if tied else 0), (body + (head if tied else 0)) * 4


def profile(backend, clock: dict, prompts: list[list[int]], steps: int, peak_gflops: float,
            bandwidth_gbs: float) -> dict:
    decoder = backend.decoder
    model = backend.model
    rows = len(prompts)
    # `steps` one-token forwards after the prefill; no stop ids, so that every row decodes to the end
    decoder.stop_ids = set()
    decoder.generate(prompts, 4)  # warm-up: allocations, first-call paths
    for kind in clock.values():
        kind[:] = [0, 0.0]
    started = time.perf_counter()
    decoder.generate(prompts, steps + 1)
    wall = time.perf_counter() - started
    step_ms = clock["step"][1] / clock["step"][0] * 1000
    prefill_s = clock["prefill"][1]
    # the decoder's own loop between forwards (admission, bookkeeping), per step
    loop_ms = (wall - prefill_s - clock["step"][1]) / clock["step"][0] * 1000
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        decoder.generate(prompts, steps + 1)
    events = prof.events()
    step_events = [e for e in events if e.name == "tokenskip::step"]
    n = len(step_events)
    profiled_ms = sum(e.cpu_time_total for e in step_events) / n / 1000
    own = defaultdict(float)
    flops = 0.0
    for event in events:
        if event.name.startswith("tokenskip::") or not within_step(event):
            continue
        own[part_of(event)] += event.self_cpu_time_total / n / 1000
        if event.name in ("aten::mm", "aten::addmm") and event.input_shapes:
            shapes = event.input_shapes
            a, b = (shapes[0], shapes[1]) if event.name == "aten::mm" else (shapes[1], shapes[2])
            if len(a) == 2 and len(b) == 2:
                flops += 2 * a[0] * a[1] * b[1] / n
    own["Python and dispatch"] = max(0.0, profiled_ms - sum(own.values()))
    # the profiler slows the step (more so the Python between operators): its shares are applied to the
    # step's time without it, and the matmul rate is the operators' own (their time is not inflated much)
    share = {part: own[part] / profiled_ms for part in PARTS}
    config = model.config.get_text_config()
    multiplied, weight_bytes = parameters(model)
    context = statistics.mean(len(p) for p in prompts) + steps / 2
    cache_bytes = rows * context * config.num_hidden_layers * 2 * config.num_key_value_heads * (
        config.hidden_size // config.num_attention_heads) * 4
    compute_ms = 2 * multiplied * rows / (peak_gflops * 1e9) * 1000
    memory_ms = (weight_bytes + cache_bytes) / (bandwidth_gbs * 1e9) * 1000
    limit_ms = max(compute_ms, memory_ms)
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "slots": rows, "context_tokens": round(context), "steps": n,
        "step_ms": round(step_ms, 2), "loop_ms_per_step": round(loop_ms, 2), "step_ms_profiled": round(profiled_ms, 2),
        "tokens_per_s": round(rows / (step_ms + loop_ms) * 1000, 1),
        "prefill_tokens_per_s": round(prompt_tokens / prefill_s, 1),
        "parts_ms": {part: round(share[part] * step_ms, 2) for part in PARTS},
        "parts_share": {part: round(share[part], 3) for part in PARTS},
        "matmul_gflops_per_s": round(flops / (own["matmul"] / 1000) / 1e9, 1) if own["matmul"] else None,
        "limit": {"compute_ms": round(compute_ms, 2), "memory_ms": round(memory_ms, 2),
                  "tokens_per_s": round(rows / limit_ms * 1000, 1)},
        "share_of_limit": round(limit_ms / (step_ms + loop_ms), 3),
    }


def render(result: dict) -> str:
    lines = ["| slots | step ms | " + " | ".join(PARTS) + " | loop ms | tokens/s | matmul GFLOP/s | prefill tokens/s "
             "| limit tokens/s | of limit |", "|" + "---|" * (len(PARTS) + 8)]
    for row in result["rows"]:
        parts = " | ".join(f"{row['parts_ms'][p]:.1f} ({row['parts_share'][p]:.0%})" for p in PARTS)
        lines.append(f"| {row['slots']} | {row['step_ms']:.1f} | {parts} | {row['loop_ms_per_step']:.1f} | "
                     f"{row['tokens_per_s']:.0f} | {row['matmul_gflops_per_s']} | {row['prefill_tokens_per_s']:.0f} | "
                     f"{row['limit']['tokens_per_s']:.0f} | {row['share_of_limit']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 32, 48], help="rows decoding together")
    parser.add_argument("--context", type=int, default=96, help="prompt tokens per row (the attended cache)")
    parser.add_argument("--steps", type=int, default=48, help="decoding steps profiled per row count")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the cores' fp32 matmul peak (default: measured on a large product)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None,
                        help="memory bandwidth in GB/s (default: measured on a plain copy)")
    parser.add_argument("--model-path", type=Path, default=None,
                        help="a causal LM folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    peak = args.peak_gflops or measured_peak_gflops()
    bandwidth = args.bandwidth_gbs or measured_bandwidth_gbs()
    print(f"peak {peak:.0f} GFLOP/s, bandwidth {bandwidth:.1f} GB/s", flush=True)
    model_path = args.model_path or embedded.materialize(ROOT / "models")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    rows = []
    for slots in args.slots:
        backend = HFBackend(str(model_path), tokenizer, settings=DecodingSettings(max_new_tokens=args.steps + 1),
                            batch_size=slots, device="cpu", dtype=torch.float32)
        clock = instrument(backend.model)
        rows.append(profile(backend, clock, prompts_of(tokenizer, slots, args.context), args.steps, peak, bandwidth))
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python bench/profile_decoding.py " + " ".join(sys.argv[1:]),
              "model": f"{Path(model_path).name}, fp32, greedy", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "peak_gflops": round(peak, 1), "bandwidth_gbs": round(bandwidth, 1),
              "peak_measured": args.peak_gflops is None, "bandwidth_measured": args.bandwidth_gbs is None,
              "rows": rows}
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

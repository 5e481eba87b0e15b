"""What pooling a sweep's runs into one slot queue would save on the transformers backend (issue 30's next step).

`make demo`'s stage 5 runs the adapter at six γ on 32 questions each, one run after another: each run is one
continuous-batching call of 32 prompts on 48 slots, so no slot is ever refilled and every run drains to its
longest answer. This bench takes the prompts a finished sweep wrote (each run's predictions.jsonl) and generates
them with the same backend twice: run by run (as evaluation.py did before it pooled them, tokenskip/evaluation/
pool.py) and all runs' prompts as one call.
Greedy continuous batching decodes every request as it would alone, so the two must give the same tokens,
request for request; the bench checks that (and that both are the answers the sweep recorded) and times both.

    python bench/bench_pooling.py --runs outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/TokenSkip/{1.0,0.9,0.5} \\
        --adapter outputs/demo/adapter [--slots 48] [--tokens 128] [--json bench/results/pooling.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenskip.backends import DecodingSettings  # noqa: E402
from tokenskip.backends.hf import HFBackend  # noqa: E402
from tokenskip.core import layout  # noqa: E402
from tokenskip.core.jsonio import read_json, read_jsonl, write_json_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished run folders of one model")
    parser.add_argument("--adapter", default=None, help="the runs' adapter (as they were run)")
    parser.add_argument("--slots", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens, as the runs had")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    settings = read_json(layout.samples_dir(args.runs[0]) / layout.RUN_SETTINGS)
    tokenizer = AutoTokenizer.from_pretrained(settings["tokenizer_path"])
    backend = HFBackend(settings["model_path"], tokenizer, settings=DecodingSettings(max_new_tokens=args.tokens),
                        batch_size=args.slots, device="cpu", dtype="float32", adapter_path=args.adapter)
    records = [read_jsonl(layout.samples_dir(run) / layout.PREDICTIONS) for run in args.runs]
    prompts = [[record["prompt"] for record in run_records] for run_records in records]
    backend.generate(prompts[0][:2], 4)  # warm-up
    start = time.perf_counter()
    one_by_one = [backend.generate(run_prompts, args.tokens) for run_prompts in prompts]
    separate_s = time.perf_counter() - start
    start = time.perf_counter()
    pooled = backend.generate([prompt for run_prompts in prompts for prompt in run_prompts], args.tokens)
    pooled_s = time.perf_counter() - start
    flat = [completion for run in one_by_one for completion in run]
    identical = sum(a.text == b.text and a.n_tokens == b.n_tokens for a, b in zip(flat, pooled))
    tokens = sum(completion.n_tokens for completion in flat)
    # and the run-by-run answers are the ones the sweep itself recorded
    recorded = sum(completion.text == record["model_output"]
                   for completion, record in zip(flat, [record for run in records for record in run]))
    results = {"runs": [str(run) for run in args.runs],
               "adapter": args.adapter, "slots": args.slots, "max_new_tokens": args.tokens,
               "prompts": len(flat), "tokens": tokens, "separate_s": separate_s, "pooled_s": pooled_s,
               "speedup": separate_s / pooled_s, "identical": identical,
               "as_recorded": recorded}
    print(f"{len(args.runs)} runs, {len(flat)} prompts, {tokens} tokens on {args.slots} slots: run by run "
          f"{separate_s:.1f} s ({tokens / separate_s:.0f} tokens/s), pooled {pooled_s:.1f} s "
          f"({tokens / pooled_s:.0f} tokens/s), {separate_s / pooled_s:.2f}x; identical {identical} of {len(flat)}, "
          f"as the sweep recorded {recorded} of {len(flat)}")
    if args.json:
        write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()

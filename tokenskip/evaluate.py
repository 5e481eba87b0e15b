"""Stage 1 and stage 5: an LLM answers benchmark questions with a CoT; answers are graded.

On the train split it collects the model's own CoTs (later compressed); on the test split,
optionally with a LoRA adapter and the ratio γ in the prompt, it measures accuracy, CoT
length and latency. Runs are resumable: every finished question is appended to
`predictions.jsonl` at once, and a rerun of the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from tokenskip import data, layout, prompts
from tokenskip.backends import BACKENDS, Backend, DecodingSettings, choose_backend
from tokenskip.cli import StageParser
from tokenskip.errors import UsageError
from tokenskip.grading import GRADERS, Grader, GradeRequest
from tokenskip.jsonio import AppendLog, read_json, read_jsonl, write_json_atomic, write_jsonl_atomic
from tokenskip.metrics import summarize

EXAMPLES = """examples:
  # stage 1: the model's own CoTs on the training split (vLLM on a GPU)
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --data-type train \\
      --output-dir outputs/Qwen2.5-7B-Instruct/gsm8k/
  # stage 5: the TokenSkip adapter at every gamma on the test split, the model loaded once
  python evaluation.py --model-path models/Qwen2.5-7B-Instruct --use_adapter \\
      --adapter-path models/TokenSkip-Qwen2.5-7B-Instruct-GSM8K --compression_ratio 1.0 0.9 0.8 0.7 0.6 0.5
  # offline, on a CPU, with the embedded model (python download_models.py --embedded)
  python evaluation.py --model-path models/SmolLM2-135M-Instruct --data-path datasets/sample/test.jsonl \\
      --max_new_tokens 128 --model-size 135m
  # grade an existing run again
  python evaluation.py --regrade outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/test
"""
BASELINES = ("truncation", "prompt")
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN_SETTINGS = "run.json"
GENERATION_LOG = "generation_log.jsonl"


def build_parser() -> StageParser:
    parser = StageParser(prog="evaluation.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add = parser.add_argument
    add("--output-dir", default=layout.DEFAULT_OUTPUT_DIR.format(benchmark="gsm8k"),
        help="root of this model's outputs; the run goes to {output-dir}/{model-size}/Original/{data-type}/ "
             "or, with an adapter, {output-dir}/{model-size}/TokenSkip/{ratio}/")
    add("--model-path", default="models/Qwen2.5-7B-Instruct", help="local model folder (or a hub id)")
    add("--tokenizer-path", default=None, help="tokenizer folder, if not the model's own")
    add("--adapter-path", default=None, help="LoRA adapter folder, used with --use_adapter")
    add("--model-size", default="7b", help="free text naming the model size in the output path (3b, 7b, 14b, 8b...)")
    add("--model-type", choices=prompts.MODEL_TYPES, default="qwen", help="prompt format")
    add("--use_adapter", action="store_true", help="load the LoRA adapter from --adapter-path")
    add("--compression_ratio", type=float, nargs="+", default=[1.0], metavar="γ",
        help="target CoT compression ratio γ in (0, 1]; γ < 1 adds the ratio tag to the prompt. Several "
             "ratios run one after another, each in its own folder, with the model loaded once")
    add("--benchmark", choices=data.BENCHMARKS, default="gsm8k", help="gsm8k, or math (MATH-500 for test)")
    add("--data-type", choices=data.SPLITS, default="test", help="train collects CoTs; test measures")
    add("--data-path", default=None,
        help="a local jsonl; default datasets/{gsm8k|math-500}/{split}.jsonl, else the same under "
             "../shared/data/, else the Hugging Face hub")
    add("--use_vllm", action="store_true", help="same as --backend vllm")
    add("--backend", choices=BACKENDS, default="auto",
        help="auto: vLLM when installed and a GPU is visible, otherwise transformers (hf)")
    add("--max_num_examples", type=int, default=None,
        help="evaluate a seeded random subset of this size (the original script's sampling)")
    add("--max_new_tokens", type=int, default=512,
        help="generation budget; MATH adapter runs use round(max_new_tokens * γ), as the original")
    add("--eval_batch_size", type=int, default=16, help="batch size of the transformers backend")
    add("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    add("--seed", type=int, default=42, help="sampling seed and --max_num_examples subset seed")
    add("--tensor_parallel_size", type=int, default=None, help="vLLM GPUs; default: every visible GPU")
    add("--device", default="auto", help="transformers backend device: auto, cpu, cuda, cuda:1...")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU, bf16 (or fp16) on GPU")
    add("--baseline", choices=BASELINES, default=None,
        help="the paper's baselines at --compression_ratio γ, on the base model: truncation caps the output at "
             "γ x the original run's mean CoT length; prompt asks for (1-γ) fewer words")
    add("--label", default=None, help="this run's name in reports (default: its method)")
    add("--grader", choices=sorted(GRADERS), default="tokenskip", help="primary grader; the other is reported too")
    add("--grading-timeout", type=float, default=5.0, help="seconds allowed for one answer-equivalence check")
    add("--regrade", metavar="PATH", default=None,
        help="re-grade an existing predictions.jsonl (or the run folder holding it) in place; no model needed")
    return parser


@dataclass(frozen=True)
class RunSettings:
    """What determines a run's outputs; a resumed run must match it exactly."""

    model_path: str
    tokenizer_path: str
    adapter_path: str | None
    model_type: str
    compression_ratio: float
    baseline: str | None
    benchmark: str
    data_type: str
    data_source: str
    max_num_examples: int | None
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int


def run_dir(args) -> Path:
    """The original layout; train-split adapter runs and γ-tagged base runs get their own folder."""
    root = Path(args.output_dir) / args.model_size
    ratio = prompts.ratio_tag(args.compression_ratio)
    if args.baseline or args.use_adapter:
        folder = root / layout.RUN_FOLDERS[args.baseline or "tokenskip"] / ratio
        return folder / "train" if args.data_type == "train" else folder
    folder = root / layout.RUN_FOLDERS["original"] / args.data_type
    return folder if args.compression_ratio == 1.0 else folder / f"ratio_{ratio}"


def validate(args) -> None:
    for ratio in args.compression_ratio:
        if not 0.0 < ratio <= 1.0:
            raise UsageError(f"--compression_ratio must be in (0, 1], got {ratio}")
    if args.max_new_tokens <= 0:
        raise UsageError(f"--max_new_tokens must be positive, got {args.max_new_tokens}")
    if args.eval_batch_size <= 0:
        raise UsageError(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.use_vllm:
        args.backend = "vllm"
    if args.baseline and (args.use_adapter or max(args.compression_ratio) >= 1.0):
        raise UsageError(f"--baseline {args.baseline} runs the base model at ratios below 1: "
                         "drop --use_adapter and pass --compression_ratio values < 1")


def original_run_metrics(args) -> dict:
    """The base model's run on the same split, whose mean CoT length the truncation budget scales."""
    original = Path(args.output_dir) / args.model_size / layout.RUN_FOLDERS["original"]
    path = original / args.data_type / "samples" / METRICS
    if not path.exists():
        raise UsageError(f"--baseline truncation needs the base model's run first ({path} is missing): "
                         "run evaluation.py with the same --output-dir and --model-size, without --baseline")
    return read_json(path)


def effective_max_new_tokens(args) -> int:
    if args.baseline == "truncation":
        return max(1, round(args.compression_ratio * original_run_metrics(args)["avg_cot_length"]))
    # The original scaled MATH's budget by γ for adapter runs; kept, but as an integer.
    if args.benchmark == "math" and args.use_adapter:
        return max(1, int(round(args.max_new_tokens * args.compression_ratio)))
    return args.max_new_tokens


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Evaluate at every ratio asked for, loading the model once; returns each run's metrics."""
    args = build_parser().parse_args(argv)
    validate(args)
    if args.regrade:
        return [regrade(Path(args.regrade), primary=args.grader, timeout=args.grading_timeout)]

    from tokenskip.modeling import check_adapter, load_tokenizer, resolve_model_path

    model_path = resolve_model_path(args.model_path)
    tokenizer_path = resolve_model_path(args.tokenizer_path, "--tokenizer-path") if args.tokenizer_path else model_path
    adapter_config = check_adapter(args.adapter_path) if args.use_adapter else None
    args.backend = choose_backend(args.backend)
    examples = data.load_examples(args.benchmark, args.data_type, args.data_path)
    examples = data.subsample(examples, args.max_num_examples, args.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    shared = SharedModel(model_path, tokenizer_path, tokenizer, adapter_config)
    ratios = list(dict.fromkeys(args.compression_ratio))
    return [evaluate_ratio(argparse.Namespace(**{**vars(args), "compression_ratio": ratio}), examples, shared)
            for ratio in ratios]


@dataclass
class SharedModel:
    """What every ratio of one call shares; the backend is loaded by the first ratio that generates."""

    model_path: str
    tokenizer_path: str
    tokenizer: object
    adapter_config: dict | None
    backend: Backend | None = None


def evaluate_ratio(args, examples: list[data.Example], shared: SharedModel) -> dict:
    """One run: one ratio, one folder, resumable."""
    settings = RunSettings(
        model_path=shared.model_path, tokenizer_path=shared.tokenizer_path,
        adapter_path=args.adapter_path if args.use_adapter else None, model_type=args.model_type,
        compression_ratio=args.compression_ratio, baseline=args.baseline, benchmark=args.benchmark,
        data_type=args.data_type,
        data_source=data.data_source(args.benchmark, args.data_type, args.data_path),
        max_num_examples=args.max_num_examples, max_new_tokens=effective_max_new_tokens(args),
        temperature=args.temperature, top_p=1.0, seed=args.seed,
    )
    samples_dir = run_dir(args) / "samples"
    claim_run_folder(samples_dir, settings)

    tokenizer = shared.tokenizer
    # baselines run the base model, which knows no ratio tag
    tagged_ratio = 1.0 if args.baseline else args.compression_ratio
    request = prompts.reduction_request(args.compression_ratio) if args.baseline == "prompt" else ""
    prompt_of = {
        example.id: prompts.build_prompt(
            example.question, model_type=args.model_type, ratio=tagged_ratio,
            bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "", request=request,
        )
        for example in examples
    }
    print(f"Evaluating {shared.model_path} on {args.benchmark}/{args.data_type} ({len(examples)} questions)"
          + (f" with adapter {args.adapter_path}, γ={args.compression_ratio}" if args.use_adapter else "")
          + (f", {args.baseline} baseline at γ={args.compression_ratio}" if args.baseline else ""))

    with AppendLog(samples_dir / PREDICTIONS) as log, AppendLog(samples_dir / GENERATION_LOG) as timing:
        done = {record["id"] for record in log.records}
        unknown = done - set(prompt_of)
        if unknown:
            raise UsageError(f"{samples_dir / PREDICTIONS} holds ids not in this dataset (e.g. {sorted(unknown)[0]}); "
                             "use another --output-dir or delete that folder")
        if len(done) < len(examples):
            if shared.backend is None:
                shared.backend = create_backend(args, settings, tokenizer, shared.adapter_config)
            backend = shared.backend
            run_file = samples_dir / RUN_SETTINGS
            write_json_atomic(run_file, {**read_json(run_file), "backend": backend.name})
            with Grader(primary=args.grader, timeout=args.grading_timeout) as grader:
                generate_pending(examples, prompt_of, backend, grader, log, timing, args, settings.max_new_tokens)
            backend_name = backend.name
        else:
            backend_name = read_json(samples_dir / RUN_SETTINGS)["backend"]
        records = log.records
        timings = timing.records

    by_id = {record["id"]: record for record in records}
    ordered = [by_id[example.id] for example in examples]
    write_jsonl_atomic(samples_dir / PREDICTIONS, ordered)
    metrics = summarize(ordered, primary=args.grader,
                        total_seconds=sum(t["seconds"] for t in timings),
                        total_tokens=sum(t["tokens"] for t in timings))
    metrics.update(run_description(settings, args, backend_name))
    write_json_atomic(samples_dir / METRICS, metrics)
    print_summary(metrics, samples_dir)
    return metrics


def claim_run_folder(samples_dir: Path, settings: RunSettings) -> None:
    """Record the run's settings, or check that a folder being resumed was made with the same ones."""
    path = samples_dir / RUN_SETTINGS
    wanted = asdict(settings)
    if path.exists():
        found = read_json(path)
        changed = {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value}
        if changed:
            diff = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise UsageError(f"{samples_dir} holds a run with other settings ({diff}); "
                             "use another --output-dir or delete that folder")
        return
    if (samples_dir / PREDICTIONS).exists():
        raise UsageError(f"{samples_dir / PREDICTIONS} exists but was not written by this toolkit's run; "
                         "move it away or use another --output-dir")
    write_json_atomic(path, {**wanted, "backend": None})


def create_backend(args, settings: RunSettings, tokenizer, adapter_config: dict | None) -> Backend:
    decoding = DecodingSettings(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, seed=settings.seed)
    if args.backend == "vllm":
        import torch

        from tokenskip.backends.vllm import VLLMBackend

        tensor_parallel = args.tensor_parallel_size or max(1, torch.cuda.device_count())
        backend = VLLMBackend(settings.model_path, tokenizer, settings=decoding, tensor_parallel_size=tensor_parallel,
                              dtype=args.dtype, adapter_path=settings.adapter_path,
                              adapter_rank=(adapter_config or {}).get("r", 8))
    else:
        from tokenskip.backends.hf import HFBackend
        from tokenskip.modeling import resolve_device, resolve_dtype

        device = resolve_device(args.device)
        backend = HFBackend(settings.model_path, tokenizer, settings=decoding, batch_size=args.eval_batch_size,
                            device=device, dtype=resolve_dtype(args.dtype, device),
                            adapter_path=settings.adapter_path)
    return backend


def plan_batches(examples: list[data.Example], prompt_of: dict[str, str], backend: Backend) -> list[list[data.Example]]:
    """Longest prompts first, in fixed batches over the whole dataset.

    Sorting wastes little padding; planning over the whole dataset (not just the pending part)
    keeps every batch the same on a resumed run, so its outputs match an uninterrupted one.
    """
    lengths = {example.id: backend.count_tokens(prompt_of[example.id]) for example in examples}
    ordered = sorted(examples, key=lambda example: -lengths[example.id])
    size = backend.chunk_size
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def generate_pending(examples, prompt_of, backend: Backend, grader: Grader, log: AppendLog, timing: AppendLog,
                     args, max_new_tokens: int) -> None:
    done = {record["id"] for record in log.records}
    batches = [batch for batch in plan_batches(examples, prompt_of, backend)
               if any(example.id not in done for example in batch)]
    progress = tqdm(total=len(examples), initial=len(done), desc="questions", unit="q", dynamic_ncols=True)
    seconds = tokens = 0.0
    for batch in batches:
        start = time.perf_counter()
        completions = backend.generate([prompt_of[example.id] for example in batch], max_new_tokens)
        elapsed = time.perf_counter() - start
        new = [(example, completion) for example, completion in zip(batch, completions) if example.id not in done]
        grades = grader.grade([GradeRequest(question=example.question, model_output=completion.text,
                                            reference=example.answer) for example, completion in new])
        for (example, completion), grade in zip(new, grades):
            log.append(prediction_record(example, prompt_of[example.id], completion, grade, backend, args))
            done.add(example.id)
        new_tokens = sum(completion.n_tokens for _, completion in new)
        timing.append({"ids": [example.id for example, _ in new], "seconds": elapsed * len(new) / len(batch),
                       "tokens": new_tokens})
        seconds += elapsed * len(new) / len(batch)
        tokens += new_tokens
        progress.update(len(new))
        progress.set_postfix_str(f"{tokens / seconds:.1f} tok/s" if seconds else "")
    progress.close()


def prediction_record(example: data.Example, prompt: str, completion, grade, backend: Backend, args) -> dict:
    record = {
        "dataset": f"{args.benchmark}-{args.data_type}",
        "id": example.id,
        "messages": [{"role": "user", "content": example.question}, {"role": "assistant", "content": ""}],
        "answer": example.answer,
        "reference": example.reference,
        "prompt": prompt,
        "model_output": completion.text,
        "prediction": grade.prediction,
        "cot_length": backend.count_tokens(prompts.cot_of(completion.text)),
        "output_tokens": completion.n_tokens,
        "accuracy": grade.correct,
        "grades": grade.verdicts,
        "grade_timeouts": grade.timeouts,
    }
    record.update({key: value for key, value in example.extra.items() if value is not None})
    return record


def run_method(settings: RunSettings) -> str:
    if settings.baseline:
        return settings.baseline
    if settings.adapter_path:
        return "tokenskip"
    return "original" if settings.compression_ratio == 1.0 else "ratio-tag"


def run_description(settings: RunSettings, args, backend_name: str) -> dict:
    return {
        "method": run_method(settings),
        "label": args.label,
        "compression_ratio": settings.compression_ratio,
        "use_adapter": settings.adapter_path is not None,
        "model_path": settings.model_path,
        "adapter_path": settings.adapter_path,
        "model_type": settings.model_type,
        "model_size": args.model_size,
        "benchmark": settings.benchmark,
        "data_type": settings.data_type,
        "backend": backend_name,
        "decoding": {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                     "top_p": settings.top_p, "seed": settings.seed, "eval_batch_size": args.eval_batch_size},
    }


def print_summary(metrics: dict, samples_dir: Path) -> None:
    print(f"accuracy {metrics['accuracy'] * 100:.2f}% ({metrics['grader']}), "
          f"{metrics.get('second_grader', 'second grader')} "
          f"{metrics.get('second_grader_accuracy', math.nan) * 100:.2f}% "
          f"({metrics.get('grader_disagreements', 0)} disagreements), "
          f"avg CoT {metrics['avg_cot_length']:.1f} tokens, invalid {metrics['n_invalid']}, "
          f"latency {metrics['sample_latency'] or 0:.3f} s/sample")
    print(f"wrote {samples_dir / PREDICTIONS} and {samples_dir / METRICS}")


def regrade(path: Path, *, primary: str, timeout: float) -> dict:
    """Grade an existing run again with the current grader; rewrite its files atomically."""
    predictions = path / "samples" / PREDICTIONS if path.is_dir() and (path / "samples").is_dir() else (
        path / PREDICTIONS if path.is_dir() else path)
    records = read_jsonl(predictions, what="predictions file", made_by="evaluation.py")
    if not records:
        raise UsageError(f"{predictions} is empty: nothing to regrade")
    for line_no, record in enumerate(records, start=1):
        missing = [key for key in ("messages", "model_output", "answer") if key not in record]
        if missing:
            raise UsageError(f"{predictions}:{line_no}: record lacks {', '.join(missing)}; is this a predictions file?")
    with Grader(primary=primary, timeout=timeout) as grader:
        grades = grader.grade([GradeRequest(question=record["messages"][0]["content"],
                                            model_output=record["model_output"], reference=str(record["answer"]))
                               for record in tqdm(records, desc="regrading", unit="q")])
    for record, grade in zip(records, grades):
        record.update(prediction=grade.prediction, accuracy=grade.correct, grades=grade.verdicts,
                      grade_timeouts=grade.timeouts)
    write_jsonl_atomic(predictions, records)
    metrics_path = predictions.parent / METRICS
    previous = read_json(metrics_path) if metrics_path.exists() else {}
    timings_path = predictions.parent / GENERATION_LOG
    timings = read_jsonl(timings_path) if timings_path.exists() else []
    metrics = summarize(records, primary=primary,
                        total_seconds=sum(t["seconds"] for t in timings) if timings else None,
                        total_tokens=sum(t["tokens"] for t in timings) if timings else None)
    if not timings:  # keep the speed numbers of the run that made the file
        for key in ("sample_latency", "tokens_per_second"):
            metrics[key] = previous.get(key)
    write_json_atomic(metrics_path, {**previous, **metrics})
    print_summary(metrics, predictions.parent)
    return metrics

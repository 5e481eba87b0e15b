"""soft_compress.py: train a soft compressor on a run's CoTs, and measure what it keeps.

Hybrid Prompt Compression's second stage (OSCAR-style, see tokenskip/compression/soft/): the
first N layers of the generator turn each 128-token block of a CoT into 8 embeddings, and the
generator (with a LoRA adapter) answers from them instead of from the CoT's tokens.

  train     a stage-1 run's predictions.jsonl (the model's own CoTs), or a stage-2 ratio file
            (CoTs already hard-compressed: the hybrid), or any JSONL with question, cot, answer
  evaluate  accuracy, context positions, prefill time and latency per request when the generator
            reads the question alone, the text CoT, a hard-compressed CoT and the soft-compressed CoT
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from tokenskip.compression.soft.items import load_items, with_hard_contexts
from tokenskip.compression.soft.measure import evaluate_conditions
from tokenskip.compression.soft.model import SoftModel
from tokenskip.compression.soft.settings import CONDITIONS, EvalSettings, SoftSettings, TrainSettings, read_settings
from tokenskip.compression.soft.train import train_compressor
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.locking import FolderLock
from tokenskip.models import embedded
from tokenskip.stages import flags

EXAMPLES = """examples:
  # CPU: SmolLM2-135M on GSM8K reference solutions (the bench does this end to end)
  python soft_compress.py train --recipe configs/soft_compression/smollm2_135m_cpu.yaml \\
      --input outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/Original/train/samples/predictions.jsonl \\
      --output-dir outputs/soft/smollm2
  python soft_compress.py evaluate --model-dir outputs/soft/smollm2 \\
      --input outputs/demo/SmolLM2-135M-Instruct/gsm8k/135m/Original/test/samples/predictions.jsonl \\
      --hard-ratio 0.5
  # the hybrid: train on stage 2's CoTs hard-compressed at γ = 0.5
  python soft_compress.py train --recipe configs/soft_compression/qwen2.5_7b_24gb.yaml \\
      --input outputs/.../NER_Enhanced_Compression/train_outputs_ner_enhanced_compressed_ratio_0.5.jsonl \\
      --output-dir outputs/soft/qwen7b
"""

# flags of `train` that make up the SoftSettings / TrainSettings (the recipe YAMLs use the same names)
MODEL_FLAGS = ("n_layers", "mem_tokens", "block_size", "compressor_train", "inject", "query_in_compressor",
               "max_question_tokens", "max_context_tokens", "lora_r", "lora_alpha", "lora_dropout")
TRAIN_FLAGS = tuple(f.name for f in fields(TrainSettings))


def _common(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    flags.add_device(parser, dtype_help="auto: bf16 (or fp16) on GPU, float32 on CPU; bfloat16 on CPU runs under "
                                        "autocast (faster on AVX512-BF16)")
    add("--context-field", default="auto",
        help="the record field holding the CoT: auto (train: compressed_cot, else cot; evaluate: cot; "
             "else stage 1's model_output), or a field name")
    add("--max-items", type=int, default=None, help="use the first N usable records")
    add("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> StageParser:
    parser = StageParser(prog="soft_compress.py", description=__doc__, epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=StageParser)

    train = sub.add_parser("train", help="train a compressor and the generator's adapter", epilog=EXAMPLES)
    add = train.add_argument
    add("--input", required=True,
        help="stage-1 predictions.jsonl, a stage-2 ratio file, or JSONL with question/cot/answer")
    add("--output-dir", required=True, help="the model folder to write (resumes from its checkpoint)")
    add("--recipe", default=None, help="a YAML file of these flags (configs/soft_compression/); flags given here win")
    add("--model-path", default=None,
        help="the generator (and the compressor's source); default: the model stage 1 recorded, "
             "else the embedded SmolLM2")
    flags.add_model_type(train, help="the generator's prompt format; auto: from its chat template "
                                     "(tokenskip/prompting/templates.py)")
    add("--n-layers", type=int, default=5, help="N: the generator's first N layers compress (OSCAR: 5, 8 or 10)")
    add("--mem-tokens", type=int, default=8, help="l: embeddings per full block (OSCAR: 8)")
    add("--block-size", type=int, default=128, help="CoT tokens per block (OSCAR: 128)")
    add("--compressor-train", choices=("full", "lora"), default="full",
        help="full: the compressor's layers are fine-tuned (OSCAR); lora: a LoRA adapter on them (big models)")
    add("--inject", choices=("input", "layer"), default="input",
        help="input: the compressed states enter as input embeddings (OSCAR); layer: also at layer N, where "
             "they are in the generator's own hidden-state space (bench/README.md compares the two)")
    add("--no-query-in-compressor", dest="query_in_compressor", action="store_false",
        help="compress blocks without the question before them (query-independent, cacheable)")
    add("--max-question-tokens", type=int, default=256, help="question tokens read; the rest is cut")
    add("--max-context-tokens", type=int, default=2048, help="CoT tokens read; the rest is cut")
    add("--lora-r", type=int, default=16, help="rank of the generator's LoRA (and the compressor's, with lora)")
    add("--lora-alpha", type=int, default=32, help="LoRA scaling α")
    add("--lora-dropout", type=float, default=0.1, help="LoRA dropout")
    add("--target", choices=("teacher", "gold"), default="teacher",
        help="teacher: the generator's own answer given the full text CoT (sentence-level distillation); "
             "gold: the dataset's")
    add("--lr", type=float, default=1e-4, help="the generator's LoRA")
    add("--compressor-lr", type=float, default=5e-5, help="learning rate of the compressor's layers")
    add("--warmup-ratio", type=float, default=0.05, help="share of the steps the learning rates warm up over")
    add("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    add("--epochs", type=float, default=1.0, help="passes over the training records")
    add("--batch-size", type=int, default=8, help="records per micro-batch")
    add("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    add("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm")
    add("--max-answer-tokens", type=int, default=16, help="the teacher's answers")
    add("--save-every", type=int, default=50, help="optimizer steps between checkpoints")
    add("--seed", type=int, default=42, help="initialisation, data order and dropout")
    add("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    _common(train)

    evaluate = sub.add_parser("evaluate", help="accuracy, positions and latency per condition", epilog=EXAMPLES)
    add = evaluate.add_argument
    add("--model-dir", required=True, help="a folder `train` wrote")
    add("--input", required=True, help="held-out questions with CoTs: a stage-1 test run's predictions.jsonl, "
        "a stage-2 ratio file (its compressed_cot is the hard condition), or JSONL with question/cot/answer")
    add("--output-dir", default=None, help="where metrics.json and the predictions go (default: MODEL_DIR/eval)")
    add("--conditions", nargs="+", choices=CONDITIONS, default=None,
        help="default: question text soft, plus hard and hybrid when hard-compressed CoTs are there")
    add("--hard-ratio", type=float, default=None, help="hard-compress the CoTs here at this γ for the hard condition")
    add("--hard-method", default="cts", help="the stage-2 scorer for --hard-ratio (cts needs only a causal LM)")
    add("--hard-model", default=None, help="the scorer's model (default: the generator, as CTS's reference model)")
    add("--batch-size", type=int, default=16, help="questions per generation batch")
    add("--max-answer-tokens", type=int, default=16, help="generation budget of an answer")
    add("--latency-probe", type=int, default=16, help="requests timed one at a time per condition (0: none)")
    add("--grading-timeout", type=float, default=5.0, help="seconds the grader may spend on one answer")
    _common(evaluate)
    return parser


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, with a --recipe's values as the defaults that flags given on the command line override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        recipe = read_recipe(Path(args.recipe))
        train_parser = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001 (argparse has no getter)
        train_parser.set_defaults(**recipe)
        args = parser.parse_args(argv)
    return args


def read_recipe(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise UsageError(f"--recipe {path} does not exist; the shipped recipes are in configs/soft_compression/")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"--recipe {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"--recipe {path} must be a mapping of flag names to values")
    known = {*MODEL_FLAGS, *TRAIN_FLAGS, "model_path", "model_type", "dtype", "device", "max_items", "max_steps"}
    values = {str(key).replace("-", "_"): value for key, value in recipe.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"--recipe {path}: unknown key {unknown[0]!r}; keys are train's flag names "
                         f"({', '.join(sorted(known))})")
    return values


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse(argv)
    return train_main(args) if args.command == "train" else evaluate_main(args)


def _device_and_dtype(args):
    from tokenskip.models.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def default_model_path(input_path: Path, given: str | None) -> str:
    from tokenskip.compression.driver import recorded_model
    from tokenskip.data.records import Stage1Metrics

    if given:
        return given
    stage1 = Stage1Metrics.beside(input_path)
    if stage1.model_path:
        return recorded_model(stage1.model_path, stage1.path)
    return str(embedded.default_dir())


def train_main(args: argparse.Namespace) -> dict:
    from tokenskip.models.loading import load_tokenizer, resolve_model_path
    from tokenskip.prompting import templates

    input_path = Path(args.input)
    model_path = resolve_model_path(default_model_path(input_path, args.model_path), "--model-path")
    prompt_format, family = templates.resolve_model_type(args.model_type, load_tokenizer(model_path))
    settings = SoftSettings(base_model=model_path, prompt_format=prompt_format,
                               **{name: getattr(args, name) for name in MODEL_FLAGS})
    train_settings = TrainSettings(**{name: getattr(args, name) for name in TRAIN_FLAGS})
    settings.check()
    items = load_items(input_path, context_field=args.context_field, max_items=args.max_items)
    device, dtype = _device_and_dtype(args)
    out_dir = Path(args.output_dir)
    print(f"soft compression: {len(items)} CoTs from {input_path}; generator {model_path} ({family} family, "
          f"{prompt_format} prompts); compressor = its first {settings.n_layers} layers, {settings.mem_tokens} "
          f"embeddings per {settings.block_size} tokens")
    with FolderLock(out_dir, "soft compressor folder"):
        summary = train_compressor(items, settings=settings, train_settings=train_settings, out_dir=out_dir,
                                   device=device, dtype=dtype, max_steps=args.max_steps,
                                   progress=not args.no_progress)
    print(f"trained {summary['steps']} steps on {summary['examples']} CoTs in {summary['train_seconds']:.0f} s "
          f"(teacher answers {summary['teacher_seconds']:.0f} s); loss {summary['first_loss']} -> "
          f"{summary['last_loss']:.3f}; wrote {out_dir}")
    return summary


def evaluate_main(args: argparse.Namespace) -> dict:
    model_dir = Path(args.model_dir)
    read_settings(model_dir)  # a one-line error before any model loads
    items = load_items(Path(args.input), context_field=args.context_field, max_items=args.max_items,
                          prefer_hard=False)
    device, dtype = _device_and_dtype(args)
    out_dir = Path(args.output_dir) if args.output_dir else model_dir / "eval"
    with FolderLock(out_dir, "evaluation folder"):
        model = SoftModel.load(model_dir, device=device, dtype=dtype)
        if args.hard_ratio is not None:
            tick = time.perf_counter()
            items = with_hard_contexts(items, ratio=args.hard_ratio, method=args.hard_method,
                                          model_path=args.hard_model or model.settings.base_model, device=device,
                                          progress=not args.no_progress)
            print(f"hard-compressed {len(items)} CoTs at γ = {args.hard_ratio} with {args.hard_method} "
                  f"in {time.perf_counter() - tick:.0f} s")
        conditions = tuple(args.conditions or (
            ("question", "text", "hard", "soft", "hybrid") if all(i.hard_context is not None for i in items)
            else ("question", "text", "soft")))
        settings = EvalSettings(conditions=conditions, max_answer_tokens=args.max_answer_tokens,
                                   batch_size=args.batch_size, latency_probe=args.latency_probe,
                                   grading_timeout=args.grading_timeout, hard_ratio=args.hard_ratio)
        metrics = evaluate_conditions(model, items, settings=settings, out_dir=out_dir, model_dir=str(model_dir),
                              progress=not args.no_progress)
    print(summary_table(metrics))
    print(f"wrote {out_dir / 'metrics.json'} (python report.py {out_dir} shows it)")
    return metrics


def summary_table(metrics: dict) -> str:
    """The conditions as a markdown table (report.py prints the same)."""
    lines = ["| condition | accuracy | context positions | prefill ms | latency ms |", "|---|---|---|---|---|"]
    for condition, row in metrics["conditions"].items():
        lines.append(f"| {row['name']} | {row['accuracy']:.3f} ({row['n']}) | {row['context_positions']:.1f} | "
                     f"{_ms(row.get('prefill_ms'))} | {_ms(row.get('latency_ms'))} |")
    if metrics.get("gap_recovered") is not None:
        lines.append(f"\nsoft recovers {metrics['gap_recovered']:.2f} of the accuracy gap between the question alone "
                     f"and the text CoT, with {metrics['position_ratio']:.1f}x fewer context positions")
    return "\n".join(lines)


def _ms(value) -> str:
    return "–" if value is None else f"{value:.1f}"

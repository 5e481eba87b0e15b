"""Stage 2 with LLMLingua-2 (`LLMLingua.py`) or NER-enhanced LLMLingua-2 (`llmlingua_ner.py`).

Keeps the model's correct answers, extracts well-formed CoTs, and compresses each at every ratio
from one LLMLingua-2 scoring pass, with TokenSkip's per-model options: llmlingua-2 defaults for
qwen; for llama3 `force_tokens=['Step', ':']`, `force_reserve_digit`, `drop_consecutive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenskip.compression import driver
from tokenskip.compression.scorers import scorer_class
from tokenskip.core import layout
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.ratios import DEFAULT_RATIOS, parse_ratios
from tokenskip.core.shards import shard_plan
from tokenskip.data.benchmarks import TRAIN_BENCHMARKS
from tokenskip.models.loading import looks_like_hub_id
from tokenskip.stages import flags

DEFAULT_LLMLINGUA = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"


def build_parser(method: str) -> StageParser:
    prog = scorer_class(method).script
    what = "NER-enhanced LLMLingua-2" if method == "ner" else "LLMLingua-2"
    examples = (f"examples:\n  python {prog} --input-dir outputs/Qwen2.5-7B-Instruct/gsm8k/7b/ "
                f"--llmlingua-path models/llmlingua-2-xlm-roberta-large-meetingbank\n"
                f"  python {prog} --model-size 3b --model-type qwen --benchmark math --ratios 0.8 0.6\n")
    parser = StageParser(prog=prog, description=f"Stage 2: compress the correct training CoTs with {what}.",
                         epilog=examples)
    add = parser.add_argument
    add("--input-dir", default=None,
        help="the model's outputs folder holding Original/train/samples/predictions.jsonl "
             f"(default: {layout.DEFAULT_OUTPUT_DIR}{{model-size}}/)")
    add("--model-size", default="7b", help="names the default input folder")
    flags.add_model_type(parser, help="TokenSkip's LLMLingua-2 options and CoT extraction for this target model; "
                                      "auto: the prompt format stage 1 recorded")
    add("--llmlingua-path", default=DEFAULT_LLMLINGUA,
        help="LLMLingua-2 token classifier: a local folder, or a hub name (models/<name> is used when present)")
    add("--benchmark", choices=TRAIN_BENCHMARKS, default="gsm8k",
        help="the benchmark stage 1 answered: names its output folder and how answers are read")
    add("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), help="ratios γ in (0, 1)")
    add("--max-cot-tokens", type=int, default=500, help="drop CoTs longer than this (target-model tokens)")
    add("--tokenizer-path", default=None,
        help="target model's tokenizer, for token counts; default: the model recorded in stage 1's metrics.json")
    flags.add_device(
        parser, dtype_help="auto: float32 on CPU, bf16 (or fp16) on GPU; float32 matches llmlingua most closely")
    add("--batch-size", type=int, default=None,
        help="512-token chunks per forward pass (default: 4 on CPU, 64 on GPU)")
    flags.add_shard_flags(parser.add_argument_group("scaling out (docs/scaling.md)"), unit="CoTs")
    return parser


def resolve_llmlingua(path: str) -> str:
    """A local LLMLingua-2 folder: the path itself, models/<name>, or the hub's cached snapshot."""
    if Path(path).is_dir():
        return path
    local = Path("models") / Path(path).name
    if local.is_dir():
        return str(local)
    if not looks_like_hub_id(path):
        raise UsageError(f"--llmlingua-path {path} does not exist; "
                         "download it with `python download_models.py --llmlingua-only`")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path)
    except ModuleNotFoundError:
        raise  # a missing package is said as such, not as a failed download
    except Exception as exc:  # offline, gated, renamed: all end the same way for the user
        raise UsageError(f"--llmlingua-path {path} is not a local folder and could not be fetched from the hub "
                         f"({type(exc).__name__}); run `python download_models.py --llmlingua-only`") from None


def main_for(method: str, argv: Sequence[str] | None) -> dict:
    args = build_parser(method).parse_args(argv)
    ratios = parse_ratios(args.ratios)
    plan = shard_plan(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be positive")
    input_dir = Path(args.input_dir or layout.default_model_dir(args.benchmark, args.model_size))
    predictions = layout.stage1_predictions(input_dir)
    if not predictions.is_file():
        raise UsageError(f"stage-1 predictions not found: {predictions} (written by {driver.STAGE1} "
                         f"with --output-dir {input_dir.parent}/ --model-size {input_dir.name})")
    llmlingua_path = resolve_llmlingua(args.llmlingua_path)
    scorer_type = scorer_class(method)
    model_type = driver.recorded_model_type(predictions, args.model_type)  # read once, for options and stage

    def make_scorer():
        from tokenskip.compression.scorers.llmlingua2 import OPTIONS_BY_MODEL_TYPE, QWEN_OPTIONS

        # chat models get the qwen options (no forced words): TokenSkip tuned llama3's for its prompt only
        options = OPTIONS_BY_MODEL_TYPE.get(model_type, QWEN_OPTIONS)
        return scorer_type(llmlingua_path, options=options, device=args.device,
                           dtype=args.dtype, max_batch_tokens=args.batch_size * 512 if args.batch_size else None)

    return driver.run_stage(predictions, layout.compression_dir(input_dir, method), model_type=model_type,
                              max_cot_tokens=args.max_cot_tokens, tokenizer_path=args.tokenizer_path, ratios=ratios,
                              make_scorer=make_scorer, scorer_model=llmlingua_path, scorer_type=scorer_type,
                              shards=plan, call=flags.recorded_call(args))


def llmlingua_main(argv: Sequence[str] | None = None) -> dict:
    return main_for("llmlingua2", argv)


def ner_main(argv: Sequence[str] | None = None) -> dict:
    return main_for("ner", argv)

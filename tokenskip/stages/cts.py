"""Stage 2 with Conditional Token Selection: compress the model's correct CoTs with a reference LM.

The CTS counterpart of TokenSkip's LLMLingua.py, with the flag names of the CTS authors' design
(`--input_data`, `--output_data`, `--reference_model`, `--compression_ratio`). The shared driver
(`tokenskip.compression.driver`) keeps the correct answers, extracts the CoTs and writes one file per ratio;
the CTS scorer scores every CoT once for all ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenskip.compression import driver
from tokenskip.compression.scorers.cts import CTSScorer, check_reference_model
from tokenskip.compression.scorers.cts_authors import DEFAULT_MAX_THINKING_TOKENS, AuthorsCTSScorer
from tokenskip.core import layout
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.ratios import DEFAULT_RATIOS, parse_ratios
from tokenskip.core.shards import shard_plan
from tokenskip.models import embedded
from tokenskip.stages import flags

# --selection: which tokens CTS keeps (bench/cts_modes.md compares the two)
SELECTIONS = {"answer": CTSScorer, "authors": AuthorsCTSScorer}

EXAMPLES = """examples:
  # offline, with the embedded reference model (python download_models.py --embedded)
  python CTS_data_get.py --input_data outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/train/samples/predictions.jsonl
  # on a GPU, the target model as its own reference, one ratio only
  python CTS_data_get.py --input_data outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/train/samples/predictions.jsonl \\
      --reference_model models/Qwen2.5-7B-Instruct --compression_ratio 0.5
  # the authors' own llmlingua call, long CoTs kept and cut to 5,000 target tokens, into CTS_Authors_Compression/
  python CTS_data_get.py \\
      --input_data outputs/DeepSeek-R1-Distill-Qwen-7B/math/7b/Original/train/samples/predictions.jsonl \\
      --reference_model models/Qwen2.5-7B-Instruct --selection authors --max-cot-tokens 100000
"""


def build_parser() -> StageParser:
    parser = StageParser(prog="CTS_data_get.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add = parser.add_argument
    add("--input_data", required=True,
        help="stage-1 predictions.jsonl (Original/train/samples/ of evaluation.py --data-type train), "
             "or the predictions_formatted.jsonl written next to it")
    add("--output_data", default=None,
        help=f"folder for the ratio files; default: {CTSScorer.output_folder}/ ({AuthorsCTSScorer.output_folder}/ "
             "with --selection authors) next to the Original/ folder holding the input, else next to the input file")
    add("--selection", choices=sorted(SELECTIONS), default="answer",
        help="answer: each token's log-probability gain from knowing the question and answer, top γ of the "
             "CoT's units in one batched pass (the default); authors: the CTS authors' llmlingua call "
             "(LongLLMLingua, conditioned on the question, iterative_size 1800), its output exactly, one CoT "
             "at a time; its rate is not the kept share and short CoTs come back unpruned (bench/cts_modes.md)")
    add("--max-thinking-tokens", type=int, default=None,
        help=f"--selection authors: cut each CoT to this many target-model tokens before compressing, as the "
             f"authors did (default {DEFAULT_MAX_THINKING_TOKENS}; 0: no cut). CoTs over --max-cot-tokens are "
             "dropped before that, so raise --max-cot-tokens to keep long CoTs")
    add("--reference_model", default=None,
        help="causal LM that scores the CoT tokens; default: the model that wrote the CoTs, as stage 1's "
             "metrics.json records it (CTS's own setting: the target model is its reference)")
    add("--compression_ratio", type=float, default=None,
        help="a single ratio γ in (0, 1); given alone, it is the only ratio")
    add("--ratios", type=float, nargs="+", default=None,
        help=f"ratios γ in (0, 1) (default: {' '.join(map(str, DEFAULT_RATIOS))}, "
             "unless --compression_ratio is given)")
    add("--tokenizer-path", default=None,
        help="target model's tokenizer, for token counts; default: the model recorded in stage 1's metrics.json")
    flags.add_model_type(parser, help="how the CoT is cut from the output; auto: the prompt format stage 1 recorded")
    add("--max-cot-tokens", type=int, default=500, help="drop CoTs longer than this (target tokens)")
    flags.add_device(parser, dtype_help="auto: float32 on CPU, bf16 (or fp16) on GPU")
    add("--batch-size", type=int, default=8,
        help="CoTs per forward pass (each is two sequences); --selection answer only")
    add("--max-batch-tokens", type=int, default=8192, help="padded tokens per forward pass; --selection answer only")
    add("--window", type=int, default=None,
        help="--selection answer: tokens per scoring window of a long CoT (default: the reference model's context, "
             "at most half of --max-batch-tokens); longer CoTs are scored in sliding windows")
    add("--stride", type=int, default=None,
        help="--selection answer: new CoT tokens each later window scores (default: half the window's room)")
    flags.add_shard_flags(parser.add_argument_group("scaling out (docs/scaling.md)"), unit="CoTs")
    return parser


def chosen_ratios(compression_ratio: float | None, ratios: Sequence[float] | None) -> list[float]:
    """--ratios, plus --compression_ratio; the defaults only when neither is given."""
    if compression_ratio is None and ratios is None:
        return parse_ratios(DEFAULT_RATIOS)
    return parse_ratios([*(ratios or []), *([] if compression_ratio is None else [compression_ratio])])


def default_output_folder(predictions: Path, scorer: type = CTSScorer) -> Path:
    """`{model}/{benchmark}/{size}/CTS_Compression` (the scorer's folder), the sibling of the Original/
    holding the input; next to the input when it is not in the outputs layout."""
    model_folder = layout.model_dir_of_predictions(predictions)
    if model_folder is None:
        return predictions.parent / scorer.output_folder
    return layout.compression_dir(model_folder, scorer.name)


def recorded_reference(predictions: Path) -> str:
    """No --reference_model: the model stage 1 ran, said aloud (a default that changes results is never silent)."""
    driver.check_predictions(predictions)
    try:
        model = driver.target_tokenizer_path(predictions, None)
    except UsageError:
        raise UsageError(f"no --reference_model, and no metrics.json beside {predictions} says which model wrote "
                         "these CoTs: pass --reference_model (the target model, or e.g. "
                         f"{embedded.default_dir()} offline)") from None
    print(f"CTS reference model: {model} (the model stage 1 recorded; --reference_model picks another)")
    return model


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    ratios = chosen_ratios(args.compression_ratio, args.ratios)
    plan = shard_plan(args)
    scorer_class = SELECTIONS[args.selection]
    if args.max_thinking_tokens is not None and args.selection != "authors":
        raise UsageError("--max-thinking-tokens applies to --selection authors only")
    if args.selection == "authors" and (args.window is not None or args.stride is not None):
        raise UsageError("--window and --stride apply to --selection answer only (the authors' call has its own "
                         "1,800-token windows)")
    if args.max_thinking_tokens is not None and args.max_thinking_tokens < 0:
        raise UsageError("--max-thinking-tokens must be 0 (no cut) or positive")
    predictions = Path(args.input_data)
    out_folder = Path(args.output_data) if args.output_data else default_output_folder(predictions, scorer_class)
    reference_model = check_reference_model(args.reference_model or recorded_reference(predictions))

    def make_scorer():
        if args.selection == "authors":
            # the cut counts tokens of the target model's tokenizer, the one that counts CoT tokens
            max_thinking = DEFAULT_MAX_THINKING_TOKENS if args.max_thinking_tokens is None else args.max_thinking_tokens
            target = driver.target_tokenizer_path(predictions, args.tokenizer_path) if max_thinking else None
            return AuthorsCTSScorer(reference_model, device=args.device, dtype=args.dtype, target_tokenizer=target,
                                    max_thinking_tokens=max_thinking)
        return CTSScorer(reference_model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         max_batch_tokens=args.max_batch_tokens, window=args.window, stride=args.stride)

    return driver.run_stage(predictions, out_folder, model_type=args.model_type,
                              max_cot_tokens=args.max_cot_tokens, tokenizer_path=args.tokenizer_path, ratios=ratios,
                              make_scorer=make_scorer, scorer_model=reference_model, scorer_type=scorer_class,
                              shards=plan, call=flags.recorded_call(args))

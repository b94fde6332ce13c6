"""``kvmple compare BASELINE CANDIDATE [--threshold 2%]``: per-cell ratio, CI and verdict."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kvmple import ui
from kvmple.commands.report import add_common, parse_threshold

EPILOG = """\
Each cell both campaigns share gets candidate/baseline with a 95% bootstrap CI, Mann-Whitney
U and Welch's t p-values, Cohen's d and a verdict at the threshold.
Exit codes:
   0  no cell regressed and every cell was decided
  20  regression: at least one cell regressed by at least the threshold
  21  inconclusive: no regression shown, but some cell could not be decided (too few runs,
      a CI too wide to rule out a threshold-sized loss, or a cell missing on one side)
   2  usage: same campaign twice, different metrics, no cell in common
  11  store error: unknown campaign id
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare two campaigns (baseline vs candidate) cell by cell",
        description="Compare a candidate campaign with a baseline campaign, cell by cell.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("baseline", metavar="BASELINE", help="campaign id or unique prefix")
    parser.add_argument("candidate", metavar="CANDIDATE", help="campaign id or unique prefix")
    parser.add_argument("--format", choices=("text", "markdown", "json", "junit"), default="text")
    add_common(parser)
    parser.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    from kvmple.results.compare import compare_campaigns
    from kvmple.results.jsonreport import comparison_dict, dumps
    from kvmple.results.junit import comparison_junit
    from kvmple.results.report import write_report
    from kvmple.results.store import open_store
    from kvmple.results.tables import render_comparison_markdown, render_comparison_text

    threshold = parse_threshold(args.threshold)
    with open_store(args.db, create=False) as store:
        base = store.resolve(args.baseline)
        cand = store.resolve(args.candidate)
        result = compare_campaigns(
            (base, store.runs(base.id)),
            (cand, store.runs(cand.id)),
            threshold=threshold,
            allow_mixed=args.pool_anyway,
        )
    renderers = {
        "text": render_comparison_text,
        "markdown": render_comparison_markdown,
        "json": lambda cc: dumps(comparison_dict(cc)),
        "junit": comparison_junit,
    }
    text = renderers[args.format](result)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        ui.note(f"wrote {write_report(text, args.output)}")
    for warning in result.warnings:
        ui.warn(warning)
    return result.exit_code

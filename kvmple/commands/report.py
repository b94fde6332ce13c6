"""``kvmple report [CAMPAIGN] --format text|markdown|html|json|junit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kvmple import ui
from kvmple.commands.results import add_db_option
from kvmple.errors import UsageError

EPILOG = """\
CAMPAIGN is an id, a unique id prefix, or 'latest' (the default).
text and markdown print the RFC-shaped tables (per message size: rows no PLE / PLE, columns
by overcommit, mean (±95% CI), gain and cost rows) and the 'vs RFC' ratios; html writes one
self-contained file (default: DATA_DIR/reports/ID.html) and prints its path.
Exit codes: 0; with --format junit, 20 when a comparison regressed or a cell has no data;
11 (store error: unknown campaign, no runs); 2 (usage).
"""


def parse_threshold(text: str) -> float:
    """'2%' or '0.02' -> 0.02."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(
            f"--threshold {text!r} is not a number", hint="e.g. --threshold 2% or 0.02"
        ) from None
    if not 0 < value < 1:
        raise UsageError(
            f"--threshold {text!r} is out of range", hint="a percentage like 2% (or 0.02)"
        )
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        default="2%",
        help="smallest change that counts as improved/regressed (default: 2%%)",
    )
    parser.add_argument(
        "--pool-anyway",
        action="store_true",
        help="pool runs whose provenance differs (host, kernel, knobs, guest) with a warning "
        "instead of refusing",
    )
    parser.add_argument("-o", "--output", type=Path, help="write to this file ('-': stdout)")
    add_db_option(parser)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="report a campaign: RFC-shaped tables, statistics, vs RFC, plots",
        description="Report one campaign's results.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "campaign", nargs="*", metavar="CAMPAIGN", help="default: latest (with --hosts: several)"
    )
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="hosts side by side: the CAMPAIGNs (default: the newest of each host that ran "
        "the newest playbook), one column per host, ratios to the first (text/markdown)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "markdown", "html", "json", "junit"),
        default="text",
    )
    add_common(parser)
    parser.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from kvmple.results.junit import junit_exit_code
    from kvmple.results.report import (
        default_report_path,
        load_analysis,
        render,
        write_report,
    )
    from kvmple.results.store import open_store

    threshold = parse_threshold(args.threshold)
    if args.hosts:
        return _report_hosts(args, threshold)
    if len(args.campaign) > 1:
        raise UsageError("one CAMPAIGN per report", hint="several hosts' campaigns: --hosts")
    with open_store(args.db, create=False) as store:
        analysis = load_analysis(
            store,
            args.campaign[0] if args.campaign else None,
            allow_mixed=args.pool_anyway,
            threshold=threshold,
        )
    text = render(analysis, args.format)
    output = args.output
    if output is None and args.format == "html":
        output = default_report_path(analysis, "html")
    if output is None or str(output) == "-":
        sys.stdout.write(text)
    else:
        path = write_report(text, output)
        if args.format == "html":
            sys.stdout.write(f"{path}\n")
        else:
            ui.note(f"wrote {path}")
    for warning in analysis.warnings:
        ui.warn(warning)
    return junit_exit_code(text) if args.format == "junit" else 0


def _report_hosts(args: argparse.Namespace, threshold: float) -> int:
    from kvmple.results.hosts import render_hosts
    from kvmple.results.report import write_report
    from kvmple.results.store import open_store

    with open_store(args.db, create=False) as store:
        text = render_hosts(store, args.campaign, args.format, threshold)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        ui.note(f"wrote {write_report(text, args.output)}")
    return 0

"""``kvmple results list|export|import``: what the store holds, and moving it between hosts."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from kvmple import ui


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="results store: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB "
        "(default: results.sqlite in the data directory)",
    )


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "results",
        help="list, export and import stored campaigns",
        description="Inspect the results store and move campaigns between machines.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list campaigns with their run counts")
    add_db_option(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)

    export = actions.add_parser(
        "export",
        help="export campaigns as JSON (complete, re-importable) or CSV (one row per run)",
    )
    export.add_argument("campaigns", nargs="*", metavar="CAMPAIGN", help="ids (default: all)")
    export.add_argument("--format", choices=("json", "csv"), default="json")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    add_db_option(export)
    export.set_defaults(handler=_export)

    imp = actions.add_parser(
        "import", help="merge JSON exports from other machines into this store"
    )
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    add_db_option(imp)
    imp.set_defaults(handler=_import)


def _list(args: argparse.Namespace) -> int:
    from kvmple.results.store import open_store
    from kvmple.results.tables import Table, text_table

    with open_store(args.db, create=False) as store:
        campaigns = store.campaigns()
        counts = store.run_counts()
    if args.json:
        data = [
            {
                "id": c.id,
                "name": c.name,
                "status": c.status,
                "created": c.created,
                "ok_runs": counts.get(c.id, (0, 0))[0],
                "failed_runs": counts.get(c.id, (0, 0))[1],
            }
            for c in campaigns
        ]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    if not campaigns:
        ui.note("no campaigns stored yet; run one with 'kvmple run PLAYBOOK'")
        return 0
    rows = tuple(
        (
            c.id,
            c.name,
            c.status,
            dt.datetime.fromtimestamp(c.created, dt.UTC).strftime("%Y-%m-%d %H:%M"),
            str(counts.get(c.id, (0, 0))[0]),
            str(counts.get(c.id, (0, 0))[1]),
        )
        for c in campaigns
    )
    header = ("campaign", "playbook", "status", "created (UTC)", "ok runs", "failed")
    sys.stdout.write(text_table(Table("campaigns", header, rows)) + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from kvmple.results.report import write_report
    from kvmple.results.store import open_store
    from kvmple.results.transfer import export_csv, export_json

    with open_store(args.db, create=False) as store:
        text = (export_json if args.format == "json" else export_csv)(store, args.campaigns)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        ui.note(f"wrote {write_report(text, args.output)}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from kvmple.results.store import open_store
    from kvmple.results.transfer import import_file

    with open_store(args.db) as store:
        for path in args.files:
            for campaign_id, added, skipped in import_file(store, path):
                ui.note(
                    f"{path}: campaign {campaign_id}: {added} run(s) added, "
                    f"{skipped} already stored"
                )
    return 0

"""``kvmple run PLAYBOOK [--dry-run] [--resume ID] [--db URL] [--allow-unavailable] [--json]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmple import ui
from kvmple.errors import UsageError

if TYPE_CHECKING:
    from kvmple.campaign.playbook import Playbook


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run a campaign (a playbook) end to end",
        description="Run a playbook: set host knobs per group, boot pinned guests once per "
        "block, run the workloads, store every run with its provenance as soon as it ends.",
    )
    parser.add_argument("playbook", nargs="?", type=Path, help="playbook YAML (not with --resume)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--resume", metavar="ID", help="continue an interrupted campaign")
    parser.add_argument(
        "--db", metavar="URL", help="results store (default: SQLite in the data dir)"
    )
    parser.add_argument(
        "--allow-unavailable",
        action="store_true",
        help="run the other axes when the host cannot provide a factor (e.g. PLE under TCG) "
        "and record that factor as unavailable, with the reason",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not print the report at the end"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each campaign's outcome as one JSON line on stdout (docs/run-json.md) "
        "instead of the report; the summary lines go to stderr",
    )
    parser.add_argument(
        "--cold-boot",
        action="store_true",
        help="boot every guest for real instead of restoring booted snapshots (and save none)",
    )
    parser.set_defaults(handler=_run)


def _say_what_this_host_provides(playbook: Playbook, campaigns: int = 1) -> None:
    """After a dry run: would this host run the plan as written? (cached doctor, no boot)
    Lists every requirement the host does not meet; ``campaigns``: one per workload."""
    from kvmple.campaign.hostfit import host_fit
    from kvmple.campaign.plan import build_plan
    from kvmple.campaign.runner import read_host_for_dry_run
    from kvmple.errors import HostError

    try:
        host = read_host_for_dry_run(f.knob for f in playbook.factors)
    except HostError as exc:
        ui.out.print(f"this host cannot run kvmple: {exc.message}")
        return
    ui.out.print(f"this host: {host.verdict} ({host.reason})")
    unmet = host_fit(playbook, host)
    if not unmet:
        ui.out.print("this host meets every requirement of the playbook")
        return
    ui.out.print(f"this host does not meet {len(unmet)} requirement(s):")
    for item in unmet:
        ui.out.print(f"  - {item.describe()}", markup=False)
    factors = [u for u in unmet if u.factor]
    if factors:
        missing = {
            f.knob: host.unavailable_knobs[f.knob]
            for f in playbook.factors
            if f.knob in host.unavailable_knobs
        }
        reduced = build_plan(playbook, missing)
        titles = " and ".join(u.requirement for u in factors)
        plural = "s" if len(factors) > 1 else ""
        ui.out.print(
            f"the {titles} factor{plural}: 'kvmple run' stops; with --allow-unavailable it "
            f"runs {len(reduced.runs) * campaigns} runs with {titles} recorded as unavailable",
            markup=False,
        )
    if any(not u.factor for u in unmet):
        ui.out.print("'kvmple run' refuses this playbook here before creating anything")


def _run(args: argparse.Namespace) -> int:
    from kvmple.campaign.plan import build_plan
    from kvmple.campaign.playbook import load_playbook, variants
    from kvmple.commands.plan_view import describe_plan

    if args.cold_boot:  # read by kvmple.vm.snapshot.wanted wherever the campaign boots
        os.environ["KVMPLE_COLD_BOOT"] = "1"
    if args.resume and args.playbook:
        raise UsageError("give either a PLAYBOOK or --resume ID, not both")
    if not args.resume and not args.playbook:
        raise UsageError("missing PLAYBOOK", hint="e.g. kvmple run playbooks/smoke.yaml")
    if args.dry_run:
        if args.resume:
            raise UsageError("--dry-run takes a PLAYBOOK, not --resume")
        if args.json:
            raise UsageError("--json reports a campaign that ran, not a --dry-run plan")
        loaded = load_playbook(args.playbook)
        each = variants(loaded)
        for variant in each:
            ui.out.print(describe_plan(variant.playbook, build_plan(variant.playbook)))
        if len(each) > 1:
            total = sum(len(build_plan(v.playbook).runs) for v in each)
            names = ", ".join(v.playbook.workloads[v.playbook.measured_role].name for v in each)
            ui.out.print(f"workload axis: {len(each)} campaigns ({names}), {total} runs in all")
        _say_what_this_host_provides(each[0].playbook, len(each))
        return 0

    from kvmple.campaign.runner import CampaignOptions, run_campaign

    options = CampaignOptions(db_url=args.db, allow_unavailable=args.allow_unavailable)
    sink = ui.Renderer()
    if args.resume:
        outcomes = [run_campaign(None, options, resume_id=args.resume, sink=sink)]
    else:
        # one campaign per workload of the axis, one after the other (a failure stops the rest)
        playbooks = variants(load_playbook(args.playbook))
        outcomes = [run_campaign(v, options, sink=sink) for v in playbooks]
    if args.json:
        from kvmple.campaign.outcome import RunOutcome

        for outcome in outcomes:  # JSON Lines: one document per campaign, in the order run
            ui.err.print(outcome.summary(), markup=False)
            # written as is: rich would treat ':name:' in a path as an emoji code
            sys.stdout.write(RunOutcome.from_outcome(outcome).to_json_line())
        sys.stdout.flush()
        return 0
    for outcome in outcomes:
        ui.out.print(outcome.summary())
        if not args.no_report:
            from kvmple.campaign.runner import campaign_report

            text, html = campaign_report(outcome, args.db)
            ui.out.print(text, markup=False, highlight=False)
            ui.out.print(f"HTML report: {html}")
    return 0

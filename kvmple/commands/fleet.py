"""``kvmple fleet run INVENTORY.yaml PLAYBOOK [--db URL]`` and ``kvmple fleet check``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmple import paths, ui
from kvmple.errors import CampaignError, UsageError

if TYPE_CHECKING:
    from kvmple.fleet.inventory import Inventory

EPILOG = """\
Each host runs 'kvmple run PLAYBOOK --db URL' over SSH (pinned host keys) on its own
hardware; all write to the one store (PostgreSQL for a fleet). Compare the hosts with
'kvmple report --hosts CAMPAIGN...'. Exit codes: 0 every host ok; 12 some host failed
(its line and log say why); 3 bad inventory; 2 usage.
"""


def register(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="run a campaign on several hosts over SSH, into one results store",
        description="Fan a campaign out to the hosts of an inventory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    actions.required = True
    run = actions.add_parser("run", help="run PLAYBOOK on every host")
    run.add_argument("inventory", type=Path, metavar="INVENTORY.yaml")
    run.add_argument("playbook", type=Path, metavar="PLAYBOOK")
    run.add_argument("--db", metavar="URL", help="shared results store (default: the inventory's)")
    run.add_argument("--host", action="append", metavar="NAME", help="only these hosts")
    run.add_argument(
        "--allow-unavailable",
        action="store_true",
        help="hosts that cannot provide a factor (PLE under TCG) record it as unavailable",
    )
    run.set_defaults(handler=_run)
    check = actions.add_parser("check", help="reach every host and run 'kvmple --version'")
    check.add_argument("inventory", type=Path, metavar="INVENTORY.yaml")
    check.set_defaults(handler=_check)


def _say(text: str) -> None:
    ui.out.print(text, markup=False, highlight=False)


def _chosen(inventory: Inventory, names: list[str] | None) -> list[str]:
    for name in names or []:
        if name not in inventory.hosts:
            raise UsageError(
                f"--host {name}: not in the inventory",
                hint=f"hosts: {', '.join(inventory.hosts)}",
            )
    return names or list(inventory.hosts)


def _run(args: argparse.Namespace) -> int:
    from kvmple.campaign.playbook import load_playbook
    from kvmple.fleet.fanout import run_fleet
    from kvmple.fleet.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    playbook = load_playbook(args.playbook).playbook  # a bad one fails here, not on every host
    if playbook.workload_axis:  # the fan-out collects one campaign id per host
        raise UsageError(
            f"{args.playbook}: fleet runs take a playbook without workload_axis",
            hint="run one playbook per workload, or 'kvmple run' it on each host",
        )
    hosts = _chosen(inventory, args.host)
    url = args.db or inventory.store
    if url is None or url.startswith("sqlite"):
        ui.warn("no shared store: each host keeps its results in its own SQLite file")
    log_dir = paths.data_dir() / "fleet" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    ui.note(f"running {args.playbook.name} on {', '.join(hosts)} (logs: {log_dir})")
    outcomes = run_fleet(
        inventory,
        args.playbook,
        db_url=url,
        allow_unavailable=args.allow_unavailable,
        hosts=hosts,
        log_dir=log_dir,
    )
    width = max(len(o.host) for o in outcomes)
    _say(f"{'host':{width}}  exit  {'campaign':34}  seconds  message")
    for o in outcomes:
        code = "-" if o.exit_code < 0 else str(o.exit_code)
        _say(
            f"{o.host:{width}}  {code:>4}  {o.campaign_id or '-':34}  {o.seconds:7.0f}  {o.message}"
        )
    campaigns = [o.campaign_id for o in outcomes if o.ok and o.campaign_id]
    if campaigns:
        db = f" --db {url}" if url else ""
        _say(f"side by side: kvmple report --hosts {' '.join(campaigns)}{db}")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise CampaignError(
            f"{len(failed)} of {len(outcomes)} hosts failed: "
            + "; ".join(f"{o.host}: {o.message}" for o in failed),
            hint=f"per-host logs in {log_dir}",
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    from kvmple.errors import KvmpleError
    from kvmple.fleet.fanout import default_connect
    from kvmple.fleet.inventory import load_inventory

    inventory = load_inventory(args.inventory)
    bad = 0
    for name, host in inventory.hosts.items():
        try:
            with default_connect(name, host) as executor:  # type: ignore[attr-defined]
                result = executor.run([*host.kvmple, "--version"], timeout=60, env=host.env or None)
            _say(f"{name}: {result.stdout.strip()}")
        except KvmpleError as exc:
            bad += 1
            _say(f"{name}: UNREACHABLE: {exc.message}")
    if bad:
        raise CampaignError(f"{bad} of {len(inventory.hosts)} hosts cannot run kvmple")
    return 0

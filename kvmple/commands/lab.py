"""``kvmple lab up intel`` and ``kvmple lab verify-ple NAME``: the Bochs VT-x lab host with
Pause-Loop Exiting, and the PLE verification kvmple runs on it (kvmple.lab.bochs_verify)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmple import ui

EPILOG = """\
up intel     boot a lab host under Bochs with an emulated VT-x CPU that has PLE
             (corei7_haswell_4770): a kernel kvmple builds (cached), busybox + Python +
             kvmple in an initramfs, a GRUB ISO. It has no network: once kvm_intel is
             loaded it runs kvmple's PLE verification by itself and reports on its console.
             Returns when kvm_intel is loaded.
verify-ple   wait for that verification, judge it and end the lab host: 'kvmple ple
             status/off/on/restore' with read-back, and PAUSE exits / PLE window updates
             counted (hist triggers) with PLE on (> 0) and off (exactly 0).
down         stop a Bochs lab host and remove its files.

Bochs is slow (an interpreter): figures from it are emulated, never hardware figures.
Exit codes: 0 verified/done, 2 unknown name, 4 missing tools, 7 lab host stalled or
stopped (console tail shown), 9 kernel build failed, 12 verification contradicted.
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "lab",
        help="lab hosts: emulated machines with real KVM (Bochs VT-x with PLE)",
        description="Emulated lab hosts where kvmple's KVM paths run for real.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="lab_action", metavar="ACTION")
    actions.required = True
    up = actions.add_parser("up", help="start a lab host")
    kinds = up.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    intel = kinds.add_parser("intel", help="Bochs, emulated VT-x with PLE (slow)")
    intel.add_argument("--name", default="intel", help="lab host name (default intel)")
    intel.add_argument("--cpus", type=int, default=1, choices=(1, 2), help="emulated CPUs")
    intel.add_argument("--timeout", type=float, default=1800.0, help="seconds to kvm_intel")
    intel.add_argument("--json", action="store_true")
    intel.set_defaults(handler=_up_intel)
    verify = actions.add_parser("verify-ple", help="collect and judge the PLE verification")
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--timeout", type=float, default=1800.0, help="seconds to the verdict")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify_ple)
    down = actions.add_parser("down", help="stop a Bochs lab host")
    down.add_argument("name", metavar="NAME")
    down.set_defaults(handler=_down)


def _up_intel(args: argparse.Namespace) -> int:
    from kvmple.lab.bochs_verify import EMULATED, up_intel

    ui.note(f"building/starting the Bochs lab host {args.name} ({EMULATED})")
    lab = up_intel(args.name, cpus=args.cpus, timeout=args.timeout)
    doc = {
        "name": lab.host.name,
        "kind": "intel",
        "pid": lab.host.pid,
        "cpus": lab.host.cpus,
        "prepare_s": lab.prepare_s,
        "stages_s": lab.stages_s,
        "iso": lab.iso,
        "emulated": EMULATED,
    }
    if args.json:
        ui.out.print_json(json.dumps(doc))
        return 0
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in lab.stages_s.items())
    ui.out.print(f"lab host {lab.host.name} up (Bochs pid {lab.host.pid}): {stages}")
    ui.out.print(f"  it now runs the PLE verification: 'kvmple lab verify-ple {lab.host.name}'")
    return 0


def _verify_ple(args: argparse.Namespace) -> int:
    from kvmple.errors import CampaignError
    from kvmple.lab.bochs_verify import verify_ple

    report = verify_ple(args.name, timeout=args.timeout)
    if args.json:
        ui.out.print_json(json.dumps(report))
    else:
        _print_report(report)
    if not report["verified"]:
        raise CampaignError(
            "PLE verification contradicted: " + "; ".join(report["problems"]),
            hint=f"console log: {report['console_log']}",
        )
    return 0


def _print_report(report: dict[str, Any]) -> None:
    ui.out.print(f"lab host {report['name']}: {report['emulated']}")
    for setting in report["settings"]:
        counts = setting.get("counts", {})
        ple = setting.get("ple", {})
        ui.out.print(
            f"  {setting['setting']:<22} ple_gap={ple.get('ple_gap')} "
            f"ple_window={ple.get('ple_window')}  PAUSE exits {counts.get('pause_exits')}, "
            f"window updates {counts.get('ple_window_updates')}"
            + (f"  ERROR {setting['error']}" if "error" in setting else "")
        )
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report["stages_s"].items())
    ui.out.print(f"  times from Bochs start: {stages}")
    verdict = "verified" if report["verified"] else "NOT verified"
    ui.out.print(f"  {verdict}; console log {report['console_log']}")


def _down(args: argparse.Namespace) -> int:
    from kvmple.lab import bochs_run

    bochs_run.stop(bochs_run.load(args.name))
    ui.note(f"lab host {args.name} stopped")
    return 0

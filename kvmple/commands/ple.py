"""``kvmple ple status|on|off|set K=V...|restore``: Pause-Loop Exiting knobs of KVM."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from kvmple import ui

if TYPE_CHECKING:
    from kvmple.host.seam import HostSeam

EPILOG = """\
status   show the loaded module's PLE parameters (kvm_intel ple_*, kvm_amd pause_filter_*)
on       the values saved before kvmple first changed them, or the module defaults
off      ple_gap=0 (kvm_intel) / pause_filter_count=0 (kvm_amd)
set      KEY=VALUE... (kvm_amd values are ushort 0..65535, kvm_intel uint)
restore  put back the values saved before kvmple's first change, and forget them

A change reloads the module, so it is refused (nothing changed) without root, while any VM
runs, while the module is in use, or where there is no PLE. The originals are saved before
the first change and survive a crash. The reload path is verified on an emulated VT-x
CPU with PLE (Bochs: kvmple lab verify-ple), not on hardware.
Exit codes: 0 done, 2 bad KEY=VALUE, 4 refused (no PLE, not root, VMs running, in use,
read-back mismatch), 5 modprobe failed.
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "ple",
        help="show or switch KVM's Pause-Loop Exiting parameters (module reload)",
        description="Show or change KVM's Pause-Loop Exiting parameters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="ple_action", metavar="ACTION")
    actions.required = True
    status = actions.add_parser("status", help="show the current PLE parameters")
    status.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("on", help="enable PLE (saved originals or module defaults)")
    actions.add_parser("off", help="disable PLE (gap/count 0)")
    setter = actions.add_parser("set", help="set parameters: KEY=VALUE...")
    setter.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    actions.add_parser("restore", help="put back the values saved before kvmple's first change")
    parser.set_defaults(handler=_ple)


def _ple(args: argparse.Namespace) -> int:
    from kvmple.host import ple, ple_state
    from kvmple.host.seam import RELOAD_NOT_VERIFIED

    seam = make_seam()
    action = args.ple_action
    if action == "status":
        return _status(seam, args.json)
    if action == "restore":
        knobs = ple.restore(seam)
        if knobs is None:
            ui.note("nothing to restore: kvmple has not changed PLE parameters on this host")
            return 0
        verb = "restored"
    elif action in ("on", "off"):
        knobs = ple.set_mode(seam, action)
        verb = f"PLE {action}"
    else:
        _, spec = ple.require_ple(seam)
        knobs = ple.apply(seam, ple.parse_assignments(spec, args.assignments))
        verb = "set"
    ui.out.print(f"{verb}: {knobs.module} {_values(knobs.values)} ({RELOAD_NOT_VERIFIED})")
    saved = ple_state.load()
    if saved is not None:
        ui.note(
            f"originals saved in {ple_state.originals_path()}; 'kvmple ple restore' puts them back"
        )
    return 0


def make_seam() -> HostSeam:
    """The host seam this command acts on (tests replace this factory with a fake host)."""
    from kvmple.host.seam import real_seam

    return real_seam()


def _values(values: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def _status(seam: HostSeam, as_json: bool) -> int:
    from kvmple.host import ple, ple_state

    decision = ple.decide_ple(seam)
    module, reason = decision.module, decision.reason
    saved = ple_state.load()
    if decision.available is False:
        # A read: reporting "unavailable" is its successful answer (changes exit 4).
        if as_json:
            doc: dict[str, object] = {
                "available": False,
                "reason": reason,
                "basis": decision.basis,
                "module": module.name if module else None,
            }
            ui.out.print_json(json.dumps(doc))
        else:
            ui.out.print(f"PLE unavailable on this host: {reason} (decided by {decision.basis})")
        return 0
    knobs = ple.read_knobs(seam)
    if as_json:
        doc = {
            "available": decision.available,
            "reason": reason,
            "basis": decision.basis,
            **knobs.to_json(),
            "saved_originals": saved.values if saved is not None else None,
        }
        ui.out.print_json(json.dumps(doc))
        return 0
    ui.out.print(f"{knobs.module}: PLE {'on' if knobs.enabled else 'off'}  {_values(knobs.values)}")
    if decision.available is None:
        ui.out.print(f"PLE hardware support {reason}")
    else:
        ui.out.print(f"PLE available (decided by {decision.basis})")
    if saved is not None:
        ui.out.print(f"saved originals ({saved.saved_at}): {_values(saved.values)}")
    return 0

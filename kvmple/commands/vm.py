"""``kvmple vm up|ssh|down|list`` for humans and ``kvmple gc`` for the leftovers of crashes."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from kvmple import ui
from kvmple.errors import GuestError, UsageError
from kvmple.vm import gc, registry
from kvmple.vm.spec import (
    Accelerator,
    GuestImage,
    SpecArgs,
    VMSpec,
    expand_pins,
    parse_spec_arg,
)

UP_EPILOG = """\
SPEC is ROLE=IMAGE[,vcpus=N][,mem=MiB][,pins=CPUS/CPUS...][,emulator=CPUS][,append=A+B]
  IMAGE  a recipe name from guest-images/ (e.g. debian12-amqp) or a recipe path
  pins   one host CPU list per vCPU separated by '/', or one list for all vCPUs
         (default: every online host CPU); emulator defaults to the union of the pins
example: kvmple vm up a=debian12-amqp,vcpus=2,pins=0/1 b=debian12-amqp,vcpus=2,pins=0/1

Without --detach the guests live until Ctrl-C/SIGTERM, then are destroyed with their
overlays. With --detach they stay until 'kvmple vm down'. 'kvmple gc' reaps guests of runs
that were killed (SIGKILL, power loss).
"""


def register(sub: Any) -> None:
    vm = sub.add_parser("vm", help="start, reach, list and stop kvmple's pinned guests")
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="ACTION")
    vm_sub.required = True

    up = vm_sub.add_parser(
        "up",
        help="boot pinned guests and wait for SSH",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("specs", nargs="+", metavar="SPEC", help="guest spec (see below)")
    up.add_argument("--campaign", default="manual", help="campaign id in domain names")
    up.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    up.add_argument("--ready-timeout", type=float, default=240.0, metavar="SECONDS")
    up.add_argument("--keep-smt-siblings", action="store_true", help="refuse split SMT cores")
    up.add_argument("--detach", action="store_true", help="leave the guests running and exit")
    up.add_argument(
        "--cold-boot",
        action="store_true",
        help="boot for real instead of restoring a booted snapshot (and save none)",
    )
    up.add_argument("--uri", default="qemu:///system", help=argparse.SUPPRESS)
    up.set_defaults(handler=_up)

    ssh = vm_sub.add_parser("ssh", help="log into a guest (or run a command in it)")
    ssh.add_argument("name", help="domain name or role")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    ssh.add_argument("--timeout", type=float, default=600.0, help="for a command (seconds)")
    ssh.set_defaults(handler=_ssh)

    down = vm_sub.add_parser("down", help="stop detached guests (or those of dead runs)")
    down.add_argument("names", nargs="*", help="domain names or roles")
    down.add_argument("--all", action="store_true", help="every guest kvmple recorded")
    down.set_defaults(handler=_down)

    listing = vm_sub.add_parser("list", help="guests kvmple started")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    collect = sub.add_parser(
        "gc",
        help="reap guests, overlays and records left by crashed runs",
        description="Reap what crashed runs left. Never touches domains kvmple did not start.",
    )
    collect.add_argument("--all", action="store_true", help="also stop detached guests")
    collect.add_argument("--json", action="store_true")
    collect.set_defaults(handler=_gc)


# -- vm up ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UnresolvedImage:
    """Stands in for the image while the cheap checks run (before a possible image build)."""

    name: str
    qcow2: Path = Path("/nonexistent")
    kernel: Path = Path("/nonexistent")
    initrd: Path = Path("/nonexistent")
    cmdline: str = ""
    ssh_user: str = "root"
    host_keys: tuple[str, ...] = ()


def build_spec(
    args: SpecArgs,
    *,
    campaign: str,
    accelerator: Accelerator,
    online: list[int],
    image: GuestImage | None = None,
) -> VMSpec:
    """Turn a command-line guest description into a VMSpec (resolving the image unless
    ``image`` is given)."""
    if image is None:
        from kvmple.image import resolve

        image = resolve(args.image, sink=ui.Renderer())
    pins = expand_pins(args.vcpu_pins or (tuple(online),), args.vcpus)
    emulator = args.emulator_pins or tuple(sorted({c for p in pins for c in p}))
    return VMSpec(
        role=args.role,
        image=image,
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        vcpu_pins=pins,
        emulator_pins=emulator,
        accelerator=accelerator,
        extra_kernel_args=args.extra_kernel_args,
        campaign_id=campaign,
    )


def _up(args: argparse.Namespace) -> int:
    from kvmple.vm.lifecycle import boot_guests, default_accelerator, detach
    from kvmple.vm.pinning import check_pinning, read_host_cpus

    parsed = [parse_spec_arg(text) for text in args.specs]
    accelerator: Accelerator = default_accelerator() if args.accel == "auto" else args.accel
    host = read_host_cpus()
    online = sorted(host.online)
    for p in parsed:  # names and pins first: resolving an image may build it for minutes
        draft = build_spec(
            p,
            campaign=args.campaign,
            accelerator=accelerator,
            online=online,
            image=_UnresolvedImage(p.image),
        )
        check_pinning(draft, host, keep_smt_siblings=args.keep_smt_siblings)
    specs = [
        build_spec(p, campaign=args.campaign, accelerator=accelerator, online=online)
        for p in parsed
    ]
    ui.note(f"booting {len(specs)} guest(s) ({accelerator}), waiting for SSH...")
    start = time.monotonic()
    with boot_guests(
        specs,
        uri=args.uri,
        ready_timeout=args.ready_timeout,
        keep_smt_siblings=args.keep_smt_siblings,
        snapshots=False if args.cold_boot else None,
        sink=ui.Renderer(),
    ) as guests:
        table = Table(title=f"ready after {time.monotonic() - start:.1f} s")
        for column in ("guest", "ssh", "vCPU -> host CPUs (read back)", "boot", "console"):
            table.add_column(column)
        for guest in guests:
            affinity = " ".join(f"{v}:{','.join(map(str, c))}" for v, c in guest.affinity().items())
            origin = f"restored {guest.snapshot[:12]}" if guest.snapshot else "cold"
            table.add_row(
                guest.name,
                f"127.0.0.1:{guest.ssh_port}",
                affinity,
                origin,
                str(guest.console_log),
            )
        ui.err.print(table)
        print("ready " + " ".join(g.name for g in guests), flush=True)
        if args.detach:
            detach(guests)
            ui.note("detached; stop them with 'kvmple vm down --all'")
            return 0
        ui.note("guests run until Ctrl-C (or SIGTERM)")
        try:
            while True:
                for guest in guests:
                    if not guest.alive():
                        raise GuestError(
                            f"guest {guest.name} died; console tail:\n{guest.console_tail(15)}",
                            hint=f"libvirt's log: /var/log/libvirt/qemu/{guest.name}.log",
                        )
                time.sleep(1.0)
        except KeyboardInterrupt:
            ui.note("stopping guests...")
    ui.note("guests stopped and removed")
    return 0


# -- vm ssh / down / list ---------------------------------------------------------------------


def find_records(names: list[str]) -> list[registry.GuestRecord]:
    """Records matching domain names or (unique) roles; UsageError for unknown names."""
    records = registry.all_records()
    found: list[registry.GuestRecord] = []
    for name in names:
        matches = [r for r in records if r.domain == name] or [r for r in records if r.role == name]
        if not matches:
            known = ", ".join(r.domain for r in records) or "none"
            raise UsageError(f"no kvmple guest named {name!r} (known: {known})")
        if len(matches) > 1:
            raise UsageError(
                f"role {name!r} is ambiguous: {', '.join(r.domain for r in matches)}",
                hint="use the full domain name",
            )
        found.append(matches[0])
    return found


def _ssh(args: argparse.Namespace) -> int:
    from kvmple.vm import guestssh

    (record,) = find_records([args.name])
    remote = guestssh.command_argv(args.remote)
    if not remote:
        guestssh.login(record)  # an interactive session: the terminal goes to ssh
        return 255  # not reached: exec replaced this process
    result = guestssh.run_streaming(
        record, remote, lambda line: print(line, flush=True), timeout=args.timeout,
        name=record.domain,
    )  # fmt: skip
    ui.err.out(result.stderr, end="", highlight=False)
    return result.returncode


def _down(args: argparse.Namespace) -> int:
    if not args.names and not args.all:
        raise UsageError("name the guests to stop, or pass --all")
    records = registry.all_records() if args.all else find_records(args.names)
    report = gc.GcReport()
    for record in records:
        if record.owner_alive:
            report.kept.append(
                f"{record.domain}: owned by running process {record.owner_pid} "
                "(stop that process instead)"
            )
            continue
        gc.reap(record, report)
    _print_report(report)
    return 1 if report.errors else 0


def _state(record: registry.GuestRecord) -> str:
    if record.detached:
        return "detached"
    return f"owner {record.owner_pid}" if record.owner_alive else "owner dead (gc reaps it)"


def _list(args: argparse.Namespace) -> int:
    records = registry.all_records()
    if args.json:
        rows = [{**r.to_json(), "state": _state(r)} for r in records]
        ui.out.print_json(json.dumps(rows))
        return 0
    table = Table()
    for column in ("guest", "image", "ssh", "state", "created"):
        table.add_column(column)
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        table.add_row(r.domain, r.image, f"127.0.0.1:{r.ssh_port}", _state(r), created)
    ui.err.print(table if records else "no guests")
    return 0


# -- gc ---------------------------------------------------------------------------------------


def _say(message: str) -> None:
    # one unwrapped line per item: people read it, scripts and tests grep it
    ui.err.print(message, soft_wrap=True, markup=False, highlight=False)


def _print_report(report: gc.GcReport) -> None:
    for name in report.removed_domains:
        _say(f"removed domain {name}")
    for path in report.removed_dirs:
        _say(f"removed overlay dir {path}")
    for name in report.removed_records:
        _say(f"forgot record {name}")
    for line in report.kept:
        _say(f"kept {line}")
    for line in report.foreign:
        _say(f"warning: not started by kvmple here (no record), left alone: {line}")
    for line in report.errors:
        _say(f"warning: could not clean: {line}")
    if report.nothing_done and not report.errors:
        _say("nothing to clean")


def _gc(args: argparse.Namespace) -> int:
    from kvmple.lab import bochs_run

    report = gc.collect(include_detached=args.all, uris=("qemu:///system",))
    # Bochs lab hosts are processes, not libvirt domains: reaped by their own records
    for name in bochs_run.reap_orphans(include_detached=args.all):
        report.removed_records.append(f"lab host {name} (Bochs)")
    if args.json:
        ui.out.print_json(json.dumps(report.__dict__))
    else:
        _print_report(report)
    return 1 if report.errors else 0

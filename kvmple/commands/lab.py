"""``kvmple lab up|list|ssh|down``: emulated lab hosts where KVM runs for real."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from kvmple import ui
from kvmple.errors import UsageError

UP_EPILOG = """\
amd: QEMU TCG emulating an AMD-V machine (qemu64,+svm,+npt,+vgif,+svme-addr-chk). Inside,
kvm_amd is real (/dev/kvm, libvirt type='kvm' guests) but there is no PLE: TCG has no pause
filter. Emulated timings are not hardware timings. The lab host runs until 'kvmple lab down'.
"""


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="emulated lab hosts with a real KVM (AMD-V under TCG)")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab_sub.required = True

    up = lab_sub.add_parser(
        "up",
        help="boot a lab host and wait for SSH and the KVM module",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("kind", choices=("amd",), help="what the lab host emulates")
    up.add_argument("--name", default=None, help="lab host name (default: the kind)")
    up.add_argument("--cpus", type=int, default=2, help="emulated CPUs (default 2)")
    up.add_argument("--memory", type=int, default=3072, metavar="MiB", help="default 3072")
    up.add_argument("--cpu-model", default=None, help="QEMU CPU model (default qemu64)")
    up.add_argument("--ready-timeout", type=float, default=900.0, metavar="SECONDS")
    up.add_argument("--json", action="store_true", help="print the lab host as JSON")
    up.set_defaults(handler=_up)

    listing = lab_sub.add_parser("list", help="lab hosts kvmple started")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list)

    ssh = lab_sub.add_parser("ssh", help="log into a lab host (or run a command in it)")
    ssh.add_argument("name")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    ssh.add_argument("--timeout", type=float, default=3600.0, help="for a command (seconds)")
    ssh.set_defaults(handler=_ssh)

    reload = lab_sub.add_parser(
        "reload-module",
        help="(run on a lab host) reload kvm_amd/kvm_intel with PARAM=VALUE and read it back",
        description="Reload the KVM vendor module through the PLE switch's path (refused while "
        "a VM runs), with the given parameters, and read them back from sysfs.",
    )
    reload.add_argument("assignments", nargs="+", metavar="PARAM=VALUE")
    reload.add_argument("--json", action="store_true")
    reload.set_defaults(handler=_reload)

    down = lab_sub.add_parser("down", help="stop lab hosts and remove their files")
    down.add_argument("names", nargs="*")
    down.add_argument("--all", action="store_true", help="every lab host")
    down.set_defaults(handler=_down)


def _running() -> set[str]:
    from kvmple.vm.libvirt_backend import connect
    from kvmple.vm.spec import DOMAIN_PREFIX

    with connect("qemu:///system") as lv:
        return {n for n in lv.names(DOMAIN_PREFIX) if lv.is_running(n)}


def _up(args: argparse.Namespace) -> int:
    from kvmple.image import resolve
    from kvmple.lab import amd

    name = args.name or args.kind
    if args.cpus < 1 or args.memory < 1024:
        raise UsageError("a lab host needs --cpus >= 1 and --memory >= 1024 (MiB)")
    options = amd.AmdOptions(
        name=name,
        cpus=args.cpus,
        memory_mib=args.memory,
        cpu_model=args.cpu_model or amd.CPU_MODEL,
        ready_timeout_s=args.ready_timeout,
    )
    image = resolve(amd.RECIPE)
    ui.note(f"booting lab host {name} ({options.cpu}, {args.cpus} CPUs, {args.memory} MiB)...")
    host = amd.up(options, image)
    if args.json:
        ui.out.print_json(json.dumps(host.to_json()))
    print(f"ready {host.name} after {host.ready_s:.0f} s (kvm_amd loaded)", flush=True)
    return 0


def _list(args: argparse.Namespace) -> int:
    from kvmple.lab.model import entries

    found = entries(_running())
    if args.json:
        ui.out.print_json(json.dumps([e.to_json() for e in found]))
        return 0
    table = Table()
    for column in ("name", "kind", "CPUs", "memory", "ssh", "uptime", "state"):
        table.add_column(column)
    for entry in found:
        row = entry.to_json()
        table.add_row(
            entry.name,
            str(row["kind"] or "-"),
            str(row["cpus"] or "-"),
            f"{row['memory_mib']} MiB" if row["memory_mib"] else "-",
            f"127.0.0.1:{row['ssh_port']}",
            time.strftime("%H:%M:%S", time.gmtime(entry.uptime_s())),
            entry.state,
        )
    ui.err.print(table if found else "no lab hosts")
    return 0


def _ssh(args: argparse.Namespace) -> int:
    from kvmple.lab.model import find
    from kvmple.remote import SSHExecutor

    record = find(args.name, _running()).record
    remote = list(args.remote or [])
    if remote[:1] == ["--"]:  # only the separator: a '--' inside the command is the command's
        remote = remote[1:]
    if remote:
        with SSHExecutor(
            "127.0.0.1",
            record.ssh_port,
            record.ssh_user,
            Path(record.ssh_key),
            record.host_keys,
            name=f"lab host {record.role}",
        ) as executor:
            result = executor.stream(
                remote, lambda line: print(line, flush=True), args.timeout, check=False
            )
        ui.err.out(result.stderr, end="", highlight=False)
        return result.returncode
    known_hosts = Path(record.run_dir) / "known_hosts"
    label = f"[127.0.0.1]:{record.ssh_port}"
    known_hosts.write_text("".join(f"{label} {key}\n" for key in record.host_keys))
    argv = [
        "ssh",
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-i", record.ssh_key,
        "-p", str(record.ssh_port),
        f"{record.ssh_user}@127.0.0.1",
    ]  # fmt: skip
    os.execvp("ssh", argv)  # an interactive session: hand the terminal over to ssh


def _reload(args: argparse.Namespace) -> int:
    from kvmple.host.seam import real_seam
    from kvmple.lab.reload import reload_with

    values: dict[str, int] = {}
    for word in args.assignments:
        name, eq, value = word.partition("=")
        if not eq or not name or not value.isdigit():
            raise UsageError(f"{word!r} is not PARAM=VALUE with a whole number, e.g. nested=0")
        values[name] = int(value)
    result = reload_with(real_seam(), values)
    if args.json:
        ui.out.print_json(json.dumps(result.to_json()))
    else:
        read = ", ".join(f"{k}={v}" for k, v in result.after.items())
        print(f"{result.module} reloaded; read back {read}", flush=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    from kvmple.lab.model import entries, find
    from kvmple.vm import gc

    if not args.names and not args.all:
        raise UsageError("name the lab hosts to stop, or pass --all")
    running = _running()
    chosen = entries(running) if args.all else [find(n, running) for n in args.names]
    report = gc.GcReport()
    for entry in chosen:
        if entry.record.owner_alive:
            report.kept.append(f"{entry.name}: still booting in process {entry.record.owner_pid}")
            continue
        gc.reap(entry.record, report)
    for domain in report.removed_records:
        ui.err.print(f"removed lab host {domain}", soft_wrap=True, markup=False)
    for line in report.kept + report.errors:
        ui.err.print(f"warning: {line}", soft_wrap=True, markup=False)
    if not chosen:
        ui.err.print("no lab hosts")
    return 1 if report.errors else 0

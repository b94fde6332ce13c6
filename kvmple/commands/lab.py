"""``kvmple lab up|list|ssh|down|verify-ple``: emulated lab hosts where KVM runs for real:
AMD-V under QEMU TCG (kvmple.lab.amd) and VT-x with PLE under Bochs (kvmple.lab.bochs_verify)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from kvmple import ui
from kvmple.errors import GuestError, UsageError

if TYPE_CHECKING:
    from kvmple.lab.bochs_verify import VerifyReport

UP_EPILOG = """\
amd: QEMU TCG emulating an AMD-V machine (qemu64,+svm,+npt,+vgif,+svme-addr-chk). Inside,
kvm_amd is real (/dev/kvm, libvirt type='kvm' guests) but there is no PLE: TCG has no pause
filter. Emulated timings are not hardware timings. The lab host runs until 'kvmple lab down'.
Its first boot saves the ready lab host (kvm_amd loaded, no guest running) as a booted
snapshot; later ones restore it (23-36 s here against 60 s cold; --cold-boot boots for real).

intel: Bochs emulating a VT-x CPU that has PLE (corei7_haswell_4770): a kernel kvmple builds
(cached), busybox + Python + kvmple in an initramfs, a GRUB ISO. It has no network: once
kvm_intel is loaded it runs kvmple's PLE verification by itself and reports on its console
('kvmple lab verify-ple NAME' collects and judges it). Bochs is an interpreter: its figures
are emulated, never hardware figures. --cpus 1 or 2.
"""


def register(sub: Any) -> None:
    lab = sub.add_parser(
        "lab", help="emulated lab hosts with a real KVM (AMD-V under TCG, VT-x+PLE under Bochs)"
    )
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab_sub.required = True

    up = lab_sub.add_parser(
        "up",
        help="boot a lab host and wait for SSH and the KVM module",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("kind", choices=("amd", "intel"), help="what the lab host emulates")
    up.add_argument("--name", default=None, help="lab host name (default: the kind)")
    up.add_argument("--cpus", type=int, default=2, help="emulated CPUs (default 2)")
    up.add_argument("--memory", type=int, default=3072, metavar="MiB", help="default 3072")
    up.add_argument("--cpu-model", default=None, help="QEMU CPU model (default qemu64)")
    up.add_argument(
        "--ready-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="to SSH + kvm_amd (amd, default 900) or to kvm_intel loaded (intel, default 1800)",
    )
    up.add_argument(
        "--cold-boot",
        action="store_true",
        help="(amd) boot it for real instead of restoring its booted snapshot",
    )
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

    _register_install_kernel(lab_sub)

    verify = lab_sub.add_parser(
        "verify-ple", help="(intel) collect and judge the PLE verification, then end the lab host"
    )
    verify.add_argument("name", metavar="NAME")
    verify.add_argument("--timeout", type=float, default=1800.0, help="seconds to the verdict")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify_ple)

    down = lab_sub.add_parser("down", help="stop lab hosts and remove their files")
    down.add_argument("names", nargs="*")
    down.add_argument("--all", action="store_true", help="every lab host")
    down.set_defaults(handler=_down)


def _register_install_kernel(lab_sub: Any) -> None:
    kernel = lab_sub.add_parser(
        "install-kernel",
        help="(amd) install a kernel kvmple built into a lab host, boot it once by kexec, "
        "check uname -r; a kernel that fails falls back (exit 13)",
        description="Copy OUT's bzImage, modules, manifest and boot-test record into the lab "
        "host over its SSH, run 'kvmple kernel install --method kexec --no-initramfs --reboot "
        "--execute' inside, wait for SSH from the new boot and compare uname -r with the "
        "build's release. A kernel that panics resets into the lab host's own kernel.",
    )
    kernel.add_argument("name", metavar="NAME")
    kernel.add_argument("--build", type=Path, required=True, metavar="OUT", help="build dir")
    kernel.add_argument("--campaign", metavar="ID", help="campaign to resume after the boot")
    kernel.add_argument(
        "--append", action="append", default=[], metavar="PARAM", help="kernel parameter"
    )
    kernel.add_argument(
        "--boot-timeout", type=float, default=900.0, metavar="SECONDS", help="default 900"
    )
    kernel.add_argument("--json", action="store_true")
    kernel.set_defaults(handler=_install_kernel)


def _running() -> set[str]:
    from kvmple.vm.libvirt_backend import connect
    from kvmple.vm.spec import DOMAIN_PREFIX

    with connect("qemu:///system") as lv:
        return {n for n in lv.names(DOMAIN_PREFIX) if lv.is_running(n)}


def _lab_name(args: argparse.Namespace) -> str:
    """--name (default: the kind), checked before anything is built or booted: it names the
    lab host's domain and files, so a bad one is a usage error (exit 2), like --cpus."""
    from kvmple.errors import ConfigError
    from kvmple.vm.spec import check_name_part

    name: str = args.name or args.kind
    try:
        check_name_part("lab host name", name)
    except ConfigError as exc:
        raise UsageError(f"--name: {exc.message}", hint=exc.hint) from None
    return name


def _refuse_taken_name(name: str) -> None:
    """UsageError when a domain kvmple-lab-NAME exists already (kvmple never touches a domain
    it has no record of, and a second lab host under one name would be ambiguous)."""
    from kvmple.lab.model import LAB_CAMPAIGN
    from kvmple.vm.libvirt_backend import connect
    from kvmple.vm.spec import domain_name

    domain = domain_name(LAB_CAMPAIGN, name)
    with connect("qemu:///system") as lv:
        taken = lv.exists(domain)
    if taken:
        raise UsageError(
            f"lab host name {name!r} is taken: the domain {domain} exists",
            hint="pick another --name, or 'kvmple lab down NAME' if kvmple started it",
        )


def _up(args: argparse.Namespace) -> int:
    from kvmple.image import resolve
    from kvmple.lab import amd

    name = _lab_name(args)
    if args.kind == "intel":
        if args.cold_boot:
            raise UsageError("--cold-boot is for amd lab hosts: a Bochs lab host always boots")
        return _up_intel(args, name)
    if args.cpus < 1 or args.memory < 1024:
        raise UsageError("a lab host needs --cpus >= 1 and --memory >= 1024 (MiB)")
    options = amd.AmdOptions(
        name=name,
        cpus=args.cpus,
        memory_mib=args.memory,
        cpu_model=args.cpu_model or amd.CPU_MODEL,
        ready_timeout_s=args.ready_timeout or 900.0,
        snapshots=False if args.cold_boot else None,
    )
    _refuse_taken_name(name)
    image = resolve(amd.RECIPE, sink=ui.Renderer())
    ui.note(f"booting lab host {name} ({options.cpu}, {args.cpus} CPUs, {args.memory} MiB)...")
    host = amd.up(options, image, sink=ui.Renderer())
    if args.json:
        ui.out.print_json(json.dumps(host.to_json()))
    how = f"restored from snapshot {host.snapshot[:12]}" if host.snapshot else "booted cold"
    print(f"ready {host.name} after {host.ready_s:.0f} s (kvm_amd loaded; {how})", flush=True)
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


_NOT_RUNNING_HINT = {
    "booting": "its 'kvmple lab up' is still waiting for it: try again when that has ended",
    "orphaned": "its 'kvmple lab up' died before it was ready: 'kvmple lab down {name}'",
    "stopped": "its domain is not running: 'kvmple lab down {name}', then 'kvmple lab up'",
}


def _ssh(args: argparse.Namespace) -> int:
    from kvmple.lab.model import find
    from kvmple.vm import guestssh

    entry = find(args.name, _running())
    if entry.state != "running":
        raise GuestError(
            f"lab host {entry.name} is {entry.state}: nothing answers SSH there",
            hint=_NOT_RUNNING_HINT[entry.state].format(name=entry.name),
        )
    record = entry.record
    remote = guestssh.command_argv(args.remote)
    if not remote:
        guestssh.login(record)  # an interactive session: the terminal goes to ssh
        return 255  # not reached: exec replaced this process
    result = guestssh.run_streaming(
        record,
        remote,
        lambda line: print(line, flush=True),
        timeout=args.timeout,
        name=f"lab host {record.role}",
    )
    ui.err.out(result.stderr, end="", highlight=False)
    return result.returncode


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


def _install_kernel(args: argparse.Namespace) -> int:
    from kvmple.kernel.manifest import load_manifest
    from kvmple.lab.kernel import install_kernel
    from kvmple.lab.model import find

    entry = find(args.name, _running())
    if entry.host is None or entry.host.kind != "amd":
        raise UsageError(f"lab host {args.name!r} is not a running amd lab host")
    manifest = load_manifest(args.build)
    ui.note(f"installing {manifest.release} into lab host {entry.name} (kexec)...")
    done = install_kernel(
        entry.record,
        args.build,
        manifest,
        campaign=args.campaign,
        append=tuple(args.append),
        boot_timeout_s=args.boot_timeout,
    )
    if args.json:
        ui.out.print_json(json.dumps(done.to_json()))
    print(
        f"lab host {done.lab} runs {done.running} (staged in {done.staged_s:.0f} s, "
        f"SSH back {done.back_s:.0f} s after the install started; emulated timings)",
        flush=True,
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    from kvmple.lab import bochs_run
    from kvmple.lab.model import entries, find
    from kvmple.vm import gc

    if not args.names and not args.all:
        raise UsageError("name the lab hosts to stop, or pass --all")
    bochs = {h.name: h for h in bochs_run.all_hosts()}
    for name in list(args.names) if not args.all else list(bochs):
        if name in bochs:
            bochs_run.stop(bochs[name])
            ui.err.print(f"removed lab host {name} (Bochs)", soft_wrap=True, markup=False)
    args.names = [n for n in args.names if n not in bochs]
    if not args.names and not args.all:
        return 0
    running = _running()
    chosen = entries(running) if args.all else [find(n, running) for n in args.names]
    report = gc.GcReport()
    for entry in chosen:
        if entry.record.owner_alive:  # still booting: its 'lab up' cleans up on SIGTERM
            owner = entry.record.owner_pid
            message = f"lab host {entry.name} is still booting: stopping its 'lab up' ({owner})"
            ui.err.print(message, soft_wrap=True, markup=False)
            gc.stop_owner(entry.record, report)
            continue
        gc.reap(entry.record, report)
    for domain in report.removed_records:
        ui.err.print(f"removed lab host {domain}", soft_wrap=True, markup=False)
    for line in report.kept + report.errors:
        ui.err.print(f"warning: {line}", soft_wrap=True, markup=False)
    if not chosen:
        ui.err.print("no lab hosts")
    return 1 if report.errors else 0


def _up_intel(args: argparse.Namespace, name: str) -> int:
    from kvmple.lab.bochs_verify import EMULATED, up_intel

    if args.cpus not in (1, 2):
        raise UsageError("the Bochs lab host takes --cpus 1 or 2")
    lab = up_intel(name, cpus=args.cpus, timeout=args.ready_timeout or 1800.0, sink=ui.Renderer())
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
        ui.out.print_json(json.dumps(report.to_json()))
    else:
        _print_report(report)
    if not report.verified:
        raise CampaignError(
            "PLE verification contradicted: " + "; ".join(report.problems),
            hint=f"console log: {report.console_log}",
        )
    return 0


def _print_report(report: VerifyReport) -> None:
    from kvmple.lab.result import LabCounts

    ui.out.print(f"lab host {report.name}: {report.emulated}")
    for setting in report.settings:
        counts = setting.counts or LabCounts()
        ple = setting.ple or {}
        ui.out.print(
            f"  {setting.setting!s:<22} ple_gap={ple.get('ple_gap')} "
            f"ple_window={ple.get('ple_window')}  PAUSE exits {counts.pause_exits}, "
            f"window updates {counts.ple_window_updates}"
            + (f"  ERROR {setting.error}" if setting.error is not None else "")
        )
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in report.stages_s.items())
    ui.out.print(f"  times from Bochs start: {stages}")
    verdict = "verified" if report.verified else "NOT verified"
    ui.out.print(f"  {verdict}; console log {report.console_log}")

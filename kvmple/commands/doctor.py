"""``kvmple doctor [--json] [--no-probe] [--reprobe]``: what this host can do."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from kvmple import ui
from kvmple.errors import HostError

EPILOG = """\
The verdict is kvm+ple, kvm (no PLE: says why) or tcg (says why), followed by what to do.
The KVM boot probe (a tiny 64-bit guest under -accel kvm, with -accel tcg as the control)
runs once per (kernel, QEMU version, KVM module) and is cached in the state directory.
--json prints the stable document described in docs/doctor-json.md.
Exit codes: 0 kvmple can run (tcg counts), 4 it cannot (no QEMU, libvirt unreachable).
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "doctor",
        help="report what this host can do (KVM, PLE, QEMU, libvirt, topology) and a verdict",
        description="Report this host's virtualization capabilities and a verdict.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the stable JSON document")
    probe = parser.add_mutually_exclusive_group()
    probe.add_argument(
        "--no-probe",
        action="store_true",
        help="never boot the probe guest (use a cached result if there is one)",
    )
    probe.add_argument(
        "--reprobe", action="store_true", help="ignore cached probe results and probe again"
    )
    parser.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from kvmple.host.doctor import diagnose

    if not args.json and not args.no_probe:
        ui.note("probing KVM and TCG with a tiny guest (cached after the first run)...")
    report = diagnose(probe_kvm=not args.no_probe, refresh_probe=args.reprobe)
    if args.json:
        ui.out.print_json(json.dumps(report.to_json()))
    else:
        _print_table(report.to_json())
    if not report.can_run:
        raise HostError(
            "kvmple cannot run on this host: " + "; ".join(report.problems),
            hint="scripts/setup-host.sh installs QEMU/libvirt and starts libvirtd",
        )
    return 0


def _yes(value: object) -> str:
    return "yes" if value else "no"


def _cpus(values: object) -> str:
    if not isinstance(values, list) or not values:
        return "none"
    return ",".join(str(v) for v in values)


def _print_table(doc: dict[str, Any]) -> None:
    cpu, kvm, ple = doc["cpu"], doc["kvm"], doc["ple"]
    topo, qemu, libvirt = doc["topology"], doc["qemu"], doc["libvirt"]
    table = Table(title="kvmple doctor", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("found")
    table.add_row("kernel", doc["host"]["kernel"])
    table.add_row("CPU", f"{cpu['vendor']} {cpu['model_name']}")
    table.add_row(
        "VT-x / AMD-V",
        cpu["virt_extension"] or "none" + (" (host is a guest)" if cpu["under_hypervisor"] else ""),
    )
    table.add_row(
        "PLE CPU support",
        _yes(cpu["ple_flag"]) if cpu.get("ple_flag_known", True) else "not shown by this kernel",
    )
    table.add_row("PLE decided by", str(ple.get("basis", "")))
    module = kvm["module"]
    table.add_row("/dev/kvm", _yes(kvm["dev_kvm"]))
    table.add_row(
        "KVM module",
        "none"
        if module is None
        else module["name"] + (" (built in)" if module["builtin"] else " (loadable)"),
    )
    if ple["values"]:
        values = " ".join(f"{k}={v}" for k, v in ple["values"].items())
        table.add_row("PLE parameters", f"{values} ({'on' if ple['enabled'] else 'off'})")
    else:
        table.add_row("PLE parameters", f"unavailable: {ple['reason']}")
    probe = kvm["boot_probe"]
    if probe is None:
        table.add_row("KVM boot probe", "not run (--no-probe, nothing cached)")
    else:
        cached = " (cached)" if probe["cached"] else ""
        table.add_row(
            "KVM boot probe", f"{probe['kvm']['status']}: {probe['kvm']['detail']}{cached}"
        )
        table.add_row(
            "TCG control", f"{probe['tcg_control']['status']}: {probe['tcg_control']['detail']}"
        )
    table.add_row("QEMU", qemu["version"] or f"missing: {qemu['error']}")
    table.add_row(
        f"libvirt {libvirt['uri']}",
        f"reachable, domain types {', '.join(libvirt['domain_types']) or 'none'}"
        if libvirt["reachable"]
        else f"unreachable: {libvirt['error']}",
    )
    table.add_row("online CPUs", _cpus(topo["online_cpus"]))
    table.add_row(
        "SMT siblings",
        " ".join("{" + _cpus(g) + "}" for g in topo["smt_sibling_groups"])
        + (" (SMT active)" if topo["smt_active"] else " (no SMT)"),
    )
    table.add_row(
        "NUMA nodes", " ".join(f"node{n['node']}:{_cpus(n['cpus'])}" for n in topo["numa_nodes"])
    )
    table.add_row("isolated CPUs", _cpus(topo["isolated_cpus"]))
    governors = sorted(set(topo["cpufreq_governors"].values()))
    table.add_row("cpufreq governor", ", ".join(governors) or "no cpufreq (fixed or virtual)")
    running = doc["vms"]["running"]
    table.add_row(
        "running VMs",
        "none"
        if not running
        else ", ".join(
            f"{vm['name']}{'' if vm['kvmple_owned'] else ' (not kvmple)'}" for vm in running
        ),
    )
    ui.out.print(table)
    ui.out.print(f"[bold]verdict: {doc['verdict']}[/bold] ({doc['accelerator']}): {doc['reason']}")
    for warning in doc["warnings"]:
        ui.out.print(f"[yellow]warning:[/yellow] {warning}")
    ui.out.print(f"what to do: {doc['advice']}")

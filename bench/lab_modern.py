#!/usr/bin/env python3
"""issue 16's two-workload knob matrix on an emulated AMD-V lab host (QEMU TCG, real kvm_amd).

Runs playbooks/lab-modern.yaml inside `kvmple lab up amd`: hackbench and sysbench threads in
a nested KVM guest against one busy loop in another, x PLE x cpu-pm x kvm.halt_poll_ns. PLE
is recorded unavailable (TCG's AMD-V has no pause filter), so 2 campaigns x 4 cells run.
Prints per run what was asked and what was read back (cpu-pm from each guest's QEMU argv,
halt_poll_ns from sysfs), the figure, and the kvm exits counted by the lab host's
tracepoints; then whether halt_poll_ns was restored, and the stage times. Emulated timings:
they show that every factor is set and read back, not how fast hardware is.

    .venv/bin/python bench/lab_modern.py [--reuse NAME]   (as root; the test image cache)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

from labcli import exit_reason_names, kvmple, use_test_cache

from kvmple.results.evidence import ExitCounts
from kvmple.results.records import RunRecord
from kvmple.results.transfer import parse_export

NAME = "bench-modern"
PARAM = "/sys/module/kvm/parameters/halt_poll_ns"


def inside(name: str, *command: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    return kvmple("lab", "ssh", "--timeout", str(int(timeout)), name, "--", *command,
                  timeout=timeout + 60)[1]  # fmt: skip


FORMAT = "/sys/kernel/tracing/events/kvm/kvm_exit/format"


def _exits(run: RunRecord, names: dict[int, str]) -> str:
    if run.kvm is None:
        return "not recorded"
    exits = run.kvm.exits
    if not isinstance(exits, ExitCounts):
        return f"unavailable: {exits.unavailable}"
    top = sorted(exits.exits_by_reason.items(), key=lambda kv: -kv[1])[:3]
    shown = ", ".join(f"{names.get(int(k, 0), k)} {v}" for k, v in top)
    return f"{exits.exits} ({shown})"


def _row(workload: str, run: RunRecord, names: dict[int, str]) -> str:
    knobs = run.provenance["knobs"]
    pm, poll = knobs["cpu-pm"], knobs["kvm.halt_poll_ns"]
    argv = {v.removeprefix("-overcommit cpu-pm=") for v in pm.get("guests", {}).values()}
    pm_read = ",".join(sorted(argv)) or "-"  # from each guest's QEMU command line
    figures = " ".join(f"{k}={v:.4g}" for k, v in run.figures.items())
    asked = f"{run.cell['cpu-pm']}/{pm_read}"
    polled = f"{run.cell['kvm.halt_poll_ns']}/{poll.get('value', '?')}"
    return f"{workload:17} {asked:8} {polled:15} {figures:40} {_exits(run, names)}"


def report(name: str) -> None:
    export = inside(name, "kvmple", "results", "export", "--format", "json")
    campaigns = parse_export(export.stdout, f"results export inside {name}").campaigns
    names = exit_reason_names(inside(name, "cat", FORMAT).stdout)
    print(f"{'workload':17} {'cpu-pm':8} {'halt_poll_ns':15} {'figures':40} kvm exits in the "
          "run window (top reasons)")  # fmt: skip
    print(f"{'':17} {'set/read':8} {'set/read':15}")
    for campaign in campaigns:
        workload = campaign.meta.name.removeprefix("lab-modern-")
        for run in campaign.runs:
            if run.status != "ok":
                print(f"{workload}: run {run.run_key} {run.status}: {run.reason}")
                continue
            print(_row(workload, run, names))
        print(f"  {workload}: unavailable {campaign.meta.notes.get('unavailable', {})}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", metavar="NAME", help="a running lab host (not taken down)")
    args = parser.parse_args()
    use_test_cache()
    with tempfile.TemporaryDirectory(prefix="kvmple-bench-lab-modern-") as state:
        if not args.reuse:
            os.environ["KVMPLE_STATE_DIR"] = state
        name = args.reuse or NAME
        print(f"host load average (1 min) at start: {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")  # fmt: skip
        try:
            if not args.reuse:
                up_s, _ = kvmple("lab", "up", "amd", "--name", name)
                print(f"lab up amd -> SSH + kvm_amd: {up_s:.0f} s")
            before = inside(name, "cat", PARAM).stdout.strip()
            start = time.perf_counter()
            inside(name, "env", "-C", "/opt/kvmple", "kvmple", "run", "playbooks/lab-modern.yaml",
                   "--allow-unavailable", "--no-report", timeout=7200)  # fmt: skip
            took = time.perf_counter() - start
            print(f"lab-modern inside (2 campaigns, nested KVM): {took:.0f} s")
            report(name)
            after = inside(name, "cat", PARAM).stdout.strip()
            print(f"kvm.halt_poll_ns before {before}, after {after}: "
                  f"{'restored' if before == after else 'NOT RESTORED'}")  # fmt: skip
        finally:
            if not args.reuse:
                down_s, _ = kvmple("lab", "down", name, timeout=300)
                print(f"lab down: {down_s:.0f} s")
        print(f"host load average (1 min) at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

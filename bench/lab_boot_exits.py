#!/usr/bin/env python3
"""Where a nested guest's boot spends its exits, on an emulated AMD-V lab host (issue 13).

Inside a lab host (`kvmple lab up amd`), boots one debian12-labinner guest with `kvmple vm up`
(to SSH, pinned to the lab host's CPU 0) while the lab host's own kvm:kvm_exit hist trigger
counts every exit by reason (kvmple's ExitCounter); prints the seconds to SSH (goal <= 4
min) and the exits by reason, named from the running kernel's own kvm_exit format file
(its __print_symbolic table: arch/x86/include/uapi/asm/svm.h's SVM_EXIT_REASONS). Emulated
timings, not hardware timings: each exit of the nested guest is itself emulated by TCG.

    .venv/bin/python bench/lab_boot_exits.py [--reuse NAME]   (as root; the test image cache)
"""

from __future__ import annotations

import argparse
import json
import os

from labcli import kvmple, use_test_cache

NAME = "bench-exits"

# Run inside the lab host with its kvmple venv: count exits over one `kvmple vm up --detach`.
INSIDE = r"""
import json, re, subprocess, sys, time
from pathlib import Path
from kvmple.campaign.evidence import ExitCounter, parse_hist
fmt = Path("/sys/kernel/tracing/events/kvm/kvm_exit/format").read_text()
pairs = re.findall(r'\{\s*(0x[0-9a-fA-F]+|\d+),\s*"(\w+)"\s*\}', fmt)
names = {int(code, 0): name for code, name in pairs}
with ExitCounter(tracefs=Path("/sys/kernel/tracing"), module="kvm_amd") as counter:
    pio = counter.instance / "events" / "kvm" / "kvm_pio" / "trigger"
    pio.write_text("hist:keys=port:vals=hitcount\n")  # which I/O ports the io exits hit
    start = time.monotonic()
    up = subprocess.run(["kvmple", "vm", "up", "--detach",
                         "inner=debian12-labinner,vcpus=1,mem=384,pins=0"],
                        cwd="/opt/kvmple", capture_output=True, text=True)
    seconds = time.monotonic() - start
    counts = counter.counts()
    ports = parse_hist((pio.parent / "hist").read_text()).total_by("port")
    pio.write_text("!hist:keys=port:vals=hitcount\n")
subprocess.run(["kvmple", "vm", "down", "inner"], capture_output=True, text=True)
if up.returncode:
    sys.exit(f"vm up failed ({up.returncode}): {up.stderr[-1500:]}")
by_name = {names.get(int(code, 0), code): n for code, n in counts["exits_by_reason"].items()}
print(json.dumps({"seconds": seconds, "exits": counts["exits"], "by_reason": by_name,
                  "io_ports": ports}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reuse", metavar="NAME", help="a running lab host (not taken down)")
    args = parser.parse_args()
    use_test_cache()
    name = args.reuse or NAME
    print(f"host load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    try:
        if not args.reuse:
            up_s, _ = kvmple("lab", "up", "amd", "--name", name)
            print(f"lab up amd -> SSH + kvm_amd: {up_s:.0f} s")
        _, done = kvmple("lab", "ssh", "--timeout", "900", name, "--",
                         "/opt/kvmple/venv/bin/python", "-c", INSIDE)  # fmt: skip
        profile = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"nested guest (debian12-labinner, 1 vCPU) vm up -> SSH: {profile['seconds']:.0f} s"
              " (goal <= 240)")  # fmt: skip
        total = profile["exits"]
        print(f"kvm exits during its boot: {total}")
        for reason, count in sorted(profile["by_reason"].items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {reason:24} {count:9} {100 * count / max(total, 1):5.1f} %")
        ports = sorted(profile["io_ports"].items(), key=lambda kv: -kv[1])[:8]
        shown = ", ".join(f"{int(port, 0):#x} {n}" for port, n in ports)
        print(f"io exits by port (kvm:kvm_pio): {shown}")
    finally:
        if not args.reuse:
            down_s, _ = kvmple("lab", "down", name, timeout=300)
            print(f"lab down: {down_s:.0f} s")
    print(f"host load average (1 min) at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

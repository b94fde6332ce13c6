#!/usr/bin/env python3
"""Benchmark of the VM layer (issues 4 and 17): the two smoke guests (playbooks/smoke.yaml:
2-vCPU amqp guest with its broker, 2-vCPU spin guest with the broker masked, both pinned to
host CPUs 0-1) ready through qemu:///system, cold-booted and restored from booted snapshots.

Prints, per mode, seconds until both guests are ready (SSH + the workloads' readiness: the
broker's AMQP round trip, the guest programs shipped), each guest's SSH/ready times, the
placement read-back and the teardown (goal <= 5 s). Goal for snapshots: both ready in
<= 15 s (issue 17; 66-92 s cold before). Modes: "cold" (snapshots off), "snapshot" (restores;
the first run of a key also saves it, reported separately). The host load average is
printed: this 2-core host is shared, and TCG timings are not hardware timings.

    .venv/bin/python bench/vm.py [cold] [snapshot]   (root; default: both)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def boot_once(mode: str) -> float:
    from kvmple.campaign.playbook import load_playbook
    from kvmple.campaign.readiness import readiness_for
    from kvmple.image import resolve
    from kvmple.vm.lifecycle import boot_guests
    from kvmple.vm.spec import VMSpec

    playbook = load_playbook(ROOT / "playbooks" / "smoke.yaml").playbook
    specs = [
        VMSpec(
            role,
            resolve(g.image),
            g.vcpus,
            g.memory_mib,
            g.pin,
            tuple(sorted(g.host_cpus)),
            "tcg",
            tuple(g.kernel_args.split()),
            "bench",
        )
        for role, g in playbook.guests.items()
    ]
    readiness = readiness_for(playbook.workloads, prepare_timeout=600)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with boot_guests(
        specs, ready_timeout=600, snapshots=mode == "snapshot", readiness=readiness
    ) as guests:
        ready = time.perf_counter() - start
        t = time.perf_counter()
        placements = [g.affinity() for g in guests]
        readback = time.perf_counter() - t
        teardown_start = time.perf_counter()
    teardown = time.perf_counter() - teardown_start
    print(f"[{mode}] host load average (1 min) at start: {load_before:.1f} on {os.cpu_count()}")
    for g in guests:
        boot = g.readback.get("boot")
        boot = boot if isinstance(boot, dict) else {}
        origin = boot.get("mode", "?")
        if boot.get("snapshot"):
            origin += f" from {boot['snapshot'][:12]}"
            if boot.get("saved_by_this_boot"):
                origin += " (saved by this boot: cold boot + save + restore)"
            origin += (
                f", clock offset after step {boot.get('clock_offset_ms')} ms "
                f"(+-{boot.get('clock_uncertainty_ms')}), vmgenid driver "
                f"{'bound' if boot.get('vmgenid_driver') else 'NOT bound'}; seconds "
                f"{boot.get('seconds')}"
            )
        print(
            f"  {g.name}: SSH at {g.timings.get('ssh_ready_s', 0):6.2f} s, ready at "
            f"{g.timings.get('ready_s', 0):6.2f} s; {origin}"
        )
    saved = any(
        isinstance(b := g.readback.get("boot"), dict) and b.get("saved_by_this_boot")
        for g in guests
    )
    goal = ""
    if mode == "snapshot" and not saved:
        goal = f"  goal <= 15 s: {'MET' if ready <= 15 else 'MISSED'}"
    print(f"[{mode}] both guests ready (SSH + readiness + placement): {ready:6.2f} s{goal}")
    print(f"[{mode}] placement read-back: {readback * 1000:.1f} ms; {placements}")
    verdict = "MET" if teardown <= 5 else "MISSED"
    print(f"[{mode}] teardown of both: {teardown:6.2f} s  goal <= 5 s: {verdict}")
    return ready


def main() -> None:
    os.environ.setdefault("KVMPLE_CACHE_DIR", "/var/cache/kvmple-tests")
    os.environ.setdefault("KVMPLE_KEY_DIR", "/var/cache/kvmple-tests/ssh")
    modes = sys.argv[1:] or ["cold", "snapshot"]
    with tempfile.TemporaryDirectory(prefix="kvmple-bench-vm-") as state:
        os.environ["KVMPLE_STATE_DIR"] = state
        results = {}
        for mode in modes:
            results[mode] = boot_once(mode)
            if mode == "snapshot":
                from kvmple.vm import snapcache

                print(f"snapshots in the cache: {[e.key[:12] for e in snapcache.entries()]}")
        if "cold" in results and "snapshot" in results:
            print(
                f"both ready: cold {results['cold']:.1f} s, from snapshots "
                f"{results['snapshot']:.1f} s"
            )


if __name__ == "__main__":
    from kvmple.cli import unwind_on_sigterm

    unwind_on_sigterm()  # SIGTERM cleans up the guests like Ctrl-C
    main()

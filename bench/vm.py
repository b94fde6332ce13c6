#!/usr/bin/env python3
"""Benchmark of the VM layer (issue 4): two 2-vCPU guests from debian12-amqp pinned to host
CPUs 0-1, started through qemu:///system (one after the other: they overcommit the two CPUs,
see kvmple.vm.lifecycle.boot_waves) and reachable over SSH, then torn down.

Prints, for one run: seconds until libvirt runs both domains, seconds until each answers SSH
(dominated by the guest's boot under TCG), placement read-back time, and teardown seconds
(goal <= 5 s). The host load average is printed too: this 2-core host is shared.

    .venv/bin/python bench/vm.py            (as root; uses the shared test image cache)
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    os.environ.setdefault("KVMPLE_CACHE_DIR", "/var/cache/kvmple-tests")
    os.environ.setdefault("KVMPLE_KEY_DIR", "/var/cache/kvmple-tests/ssh")
    with tempfile.TemporaryDirectory(prefix="kvmple-bench-vm-") as state:
        os.environ["KVMPLE_STATE_DIR"] = state
        from kvmple.image import resolve
        from kvmple.vm.lifecycle import boot_guests
        from kvmple.vm.spec import VMSpec

        image = resolve("debian12-amqp")
        specs = [
            VMSpec(role, image, 2, 1024, ((0,), (1,)), (0, 1), "tcg", (), "bench")
            for role in ("a", "b")
        ]
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        with boot_guests(specs, ready_timeout=600) as guests:
            ready = time.perf_counter() - start
            t = time.perf_counter()
            placements = [g.affinity() for g in guests]
            readback = time.perf_counter() - t
            t = time.perf_counter()
            for g in guests:
                g.executor.run(["true"], timeout=60)
            command = (time.perf_counter() - t) / len(guests)
            teardown_start = time.perf_counter()
        teardown = time.perf_counter() - teardown_start
        started = max(g.timings["started_s"] for g in guests)
        print(f"host load average (1 min) at start: {load_before:.1f} on {os.cpu_count()} CPUs")
        print(f"last domain running (overlay + define + start):   {started:6.2f} s")
        for g in guests:
            print(f"  {g.name} answered SSH after {g.timings['ssh_ready_s']:6.2f} s")
        print(f"both guests ready (SSH + placement):              {ready:6.2f} s")
        print(f"placement read-back (kernel + libvirt, 2 guests): {readback * 1000:6.1f} ms")
        print(f"placement: {placements}")
        print(f"one trivial SSH command:                          {command * 1000:6.1f} ms")
        verdict = "MET" if teardown <= 5 else "MISSED"
        print(
            f"teardown of both (destroy + overlays + records):  {teardown:6.2f} s  "
            f"goal <= 5 s: {verdict}"
        )


if __name__ == "__main__":
    from kvmple.cli import unwind_on_sigterm

    unwind_on_sigterm()  # SIGTERM cleans up the guests like Ctrl-C
    main()

#!/usr/bin/env python3
"""Benchmark of host control (issue 2 and the host brief), printing what one run measured:

- the first ``kvmple doctor`` (boot probes under KVM and TCG, libvirt capabilities)
- a later doctor, served from the cache: target ~0 s (< 1 s)
- the probe guest under TCG vs KVM (on kvm_pvm: KVM times out after 10 s)
- ``kvmple ple status`` (sysfs reads)

    .venv/bin/python bench/host.py

Uses a fresh temporary state directory so the first doctor really probes.
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="kvmple-bench-host-") as state:
        os.environ["KVMPLE_STATE_DIR"] = state
        from kvmple.host import ple
        from kvmple.host.doctor import diagnose
        from kvmple.host.kvmprobe import run_probe
        from kvmple.host.seam import real_seam

        start = time.perf_counter()
        first = diagnose()
        cold = time.perf_counter() - start
        start = time.perf_counter()
        second = diagnose()
        warm = time.perf_counter() - start
        assert second.probe is not None and second.probe.cached
        print(f"doctor, first run (probes + libvirt capabilities): {cold:6.2f} s")
        print(
            f"doctor, cached:                                    {warm:6.2f} s"
            f"  target < 1 s: {'MET' if warm < 1 else 'MISSED'}  (speed-up {cold / warm:.0f}x)"
        )
        print(f"verdict: {second.verdict} ({second.accelerator})")
        assert first.qemu.binary is not None
        tcg = run_probe(first.qemu.binary, "tcg")
        kvm = run_probe(first.qemu.binary, "kvm")
        print(f"probe guest under TCG: {tcg.status:8s} {tcg.seconds:6.2f} s  marks {tcg.stages}")
        print(f"probe guest under KVM: {kvm.status:8s} {kvm.seconds:6.2f} s  marks {kvm.stages}")
        if kvm.passed and tcg.passed:
            print(f"KVM/TCG time ratio: {kvm.seconds / tcg.seconds:.2f}")
        seam = real_seam()
        start = time.perf_counter()
        for _ in range(100):
            ple.availability(seam)
        print(f"ple availability/status read: {(time.perf_counter() - start) * 10:.2f} ms each")


if __name__ == "__main__":
    main()

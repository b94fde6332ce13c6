"""What the lab benches share: the kvmple CLI run as a child, and the test image cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def use_test_cache() -> None:
    """The images and key the lab tier built (tests/lab), unless the caller chose others."""
    os.environ.setdefault("KVMPLE_CACHE_DIR", "/var/cache/kvmple-tests")
    os.environ.setdefault("KVMPLE_KEY_DIR", "/var/cache/kvmple-tests/ssh")


def kvmple(*args: str, timeout: float = 1800.0) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `kvmple ARGS`; (seconds it took, its result). Exits the bench if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kvmple.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"kvmple {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done


def exit_reason_names(kvm_exit_format: str) -> dict[int, str]:
    """Exit code -> name, from a kernel's events/kvm/kvm_exit/format (its __print_symbolic
    table: SVM_EXIT_REASONS / VMX_EXIT_REASONS in arch/x86/include/uapi/asm/)."""
    pairs = re.findall(r'\{\s*(0x[0-9a-fA-F]+|\d+),\s*"(\w+)"\s*\}', kvm_exit_format)
    return {int(code, 0): name for code, name in pairs}


def lab_up(name: str, label: str, *extra: str) -> None:
    """`lab up amd --name NAME` with ``extra``; prints the CLI's seconds and how the lab host
    started (booted cold, or restored from which snapshot)."""
    seconds, up = kvmple("lab", "up", "amd", "--name", name, "--json", *extra)
    host, _ = json.JSONDecoder().raw_decode(up.stdout.lstrip())
    how = f"restored, snapshot {host['snapshot'][:12]}" if host.get("snapshot") else "cold"
    print(f"{label + ' -> SSH + kvm_amd:':<64} {seconds:7.1f} s  ({how}; "
          f"start -> ready {host['ready_s']:.1f} s)", flush=True)  # fmt: skip


@contextmanager
def lab_session(name: str) -> Iterator[None]:
    """A scratch kvmple state directory for one bench's lab host NAME; prints the host load
    at the start and the end, and takes the lab host down however the bench ends."""
    with tempfile.TemporaryDirectory(prefix="kvmple-bench-lab-") as state:
        os.environ["KVMPLE_STATE_DIR"] = state
        print(f"host load average (1 min) at start: {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")  # fmt: skip
        try:
            yield
        finally:
            down_s, _ = kvmple("lab", "down", name, timeout=300)
            print(f"lab down:                                          {down_s:7.1f} s")
        print(f"host load average (1 min) at end: {os.getloadavg()[0]:.1f}")

"""Host-side evidence attached to every run: what the host CPUs did during the measurement
window, and whether PLE fired.

- CPU time of the pinned host CPUs (user/system/idle/steal/iowait shares) from /proc/stat:
  available everywhere, real here.
- PAUSE exits (kvm:kvm_exit filtered on the PAUSE exit reason) and PLE window updates
  (kvm:kvm_ple_window_update), counted in a private tracefs instance: only where the guests
  run under KVM. Under TCG there are no VM exits at all, so the evidence says "unavailable"
  with that reason rather than reporting zeros. The tracefs path is verified against the
  kernel's documented layout with a fake tree in tests; not verified on hardware.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

# VMX basic exit reason 40 is PAUSE; on SVM kvm_exit reports exit_code 0x77 (SVM_EXIT_PAUSE).
PAUSE_FILTERS = {"kvm_intel": "exit_reason == 40", "kvm_amd": "exit_reason == 0x77"}


def read_cpu_times(proc: Path = Path("/proc")) -> dict[int, dict[str, int]]:
    """Per-CPU jiffies from /proc/stat."""
    times: dict[int, dict[str, int]] = {}
    for line in (proc / "stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values[: len(_STAT_FIELDS)]]
        times[int(name[3:])] = dict(zip(_STAT_FIELDS, numbers, strict=False))
    return times


def cpu_shares(
    before: dict[int, dict[str, int]], after: dict[int, dict[str, int]], cpus: frozenset[int]
) -> dict[str, Any]:
    """Shares of user/system/idle/steal/iowait over the window, summed over ``cpus``."""
    delta = {name: 0 for name in _STAT_FIELDS}
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            continue
        for name in _STAT_FIELDS:
            delta[name] += after[cpu].get(name, 0) - before[cpu].get(name, 0)
    total = sum(delta.values())
    if total <= 0:
        return {"cpus": sorted(cpus), "unavailable": "no CPU time elapsed"}
    shares = {
        "user": (delta["user"] + delta["nice"]) / total,
        "system": (delta["system"] + delta["irq"] + delta["softirq"]) / total,
        "idle": delta["idle"] / total,
        "iowait": delta["iowait"] / total,
        "steal": delta["steal"] / total,
    }
    return {"cpus": sorted(cpus), **{k: round(v, 4) for k, v in shares.items()}}


@dataclass
class ExitCounter:
    """Counts PAUSE exits and PLE window updates in a private tracefs instance."""

    tracefs: Path
    module: str
    instance: Path = field(init=False)

    def __post_init__(self) -> None:
        self.instance = self.tracefs / "instances" / f"kvmple-{os.getpid()}"

    def __enter__(self) -> ExitCounter:
        self.instance.mkdir()
        events = self.instance / "events" / "kvm"
        (events / "kvm_exit" / "filter").write_text(PAUSE_FILTERS[self.module] + "\n")
        (events / "kvm_exit" / "enable").write_text("1\n")
        ple_update = events / "kvm_ple_window_update" / "enable"
        if ple_update.exists():
            ple_update.write_text("1\n")
        return self

    def counts(self) -> dict[str, int]:
        pause = updates = 0
        for line in (self.instance / "trace").read_text().splitlines():
            if line.startswith("#"):
                continue
            if "kvm_exit:" in line:
                pause += 1
            elif "kvm_ple_window_update:" in line:
                updates += 1
        return {"pause_exits": pause, "ple_window_updates": updates}

    def __exit__(self, *exc: object) -> None:
        for event in ("kvm_exit", "kvm_ple_window_update"):
            enable = self.instance / "events" / "kvm" / event / "enable"
            with contextlib.suppress(OSError):
                enable.write_text("0\n")
        with contextlib.suppress(OSError):
            self.instance.rmdir()
        if self.instance.exists():  # a fake tree in tests is a plain directory
            shutil.rmtree(self.instance, ignore_errors=True)


def exit_evidence_source(
    accelerator: str, kvm_module: str | None, tracefs: Path = Path("/sys/kernel/tracing")
) -> ExitCounter | str:
    """An ExitCounter, or the reason why PAUSE exits cannot be counted on this host."""
    if accelerator != "kvm":
        return "guests run under QEMU TCG: there are no VM exits, so no PAUSE exits to count"
    if kvm_module not in PAUSE_FILTERS:
        return f"KVM module {kvm_module or 'unknown'} has no PLE/pause-filter exit to count"
    if not (tracefs / "events" / "kvm" / "kvm_exit").is_dir():
        return f"tracefs with kvm events not found at {tracefs} (mount tracefs, need root)"
    return ExitCounter(tracefs=tracefs, module=kvm_module)


@contextlib.contextmanager
def collect(
    cpus: frozenset[int],
    exits: ExitCounter | str,
    proc: Path = Path("/proc"),
) -> Iterator[dict[str, Any]]:
    """Collect evidence over the ``with`` body; the yielded dict is filled in on exit."""
    evidence: dict[str, Any] = {}
    before = read_cpu_times(proc)
    start = time.monotonic()
    stack = contextlib.ExitStack()
    counter = stack.enter_context(exits) if isinstance(exits, ExitCounter) else None
    try:
        yield evidence
    finally:
        evidence["window_seconds"] = round(time.monotonic() - start, 3)
        evidence["host_cpu"] = cpu_shares(before, read_cpu_times(proc), cpus)
        if counter is not None:
            evidence["kvm_exits"] = counter.counts()
        else:
            evidence["kvm_exits"] = {"unavailable": exits}
        stack.close()

"""Host-side evidence attached to every run: what the host CPUs did during the measurement
window, and whether PLE fired.

- CPU time of the pinned host CPUs (user/system/idle/steal/iowait shares) from /proc/stat:
  available everywhere, real here.
- PAUSE exits (kvm:kvm_exit filtered on the PAUSE exit reason) and PLE window updates
  (kvm:kvm_ple_window_update), counted by hist triggers in a private tracefs instance: only
  where the guests run under KVM. Under TCG there are no VM exits at all, so the evidence
  says "unavailable" with that reason rather than reporting zeros. The counting never
  reads the lossy trace ring buffer, and events the kernel dropped fail the count. Verified
  on an emulated VT-x CPU with PLE (Bochs: ``kvmple lab verify-ple``); the hist formats the
  unit tests parse were captured there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from kvmple.errors import HostError

if TYPE_CHECKING:  # the Bochs lab host runs this module without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue

_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class CountedExits(TypedDict):
    """ExitCounter.counts(): what kvmevidence.exits_record validates as results' ExitCounts
    (and the lab host reports as it is)."""

    pause_exits: int
    ple_window_updates: int
    exits: int
    exits_by_reason: dict[str, int]  # exit reason (as the hist shows it) -> exits
    pause_exits_by_thread: dict[str, int]  # vCPU thread id -> PAUSE exits
    method: str


# VMX basic exit reason 40 is PAUSE; on SVM kvm_exit reports exit_code 0x77 (SVM_EXIT_PAUSE).
PAUSE_REASONS = {"kvm_intel": 40, "kvm_amd": 0x77}


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
) -> dict[str, JsonValue]:
    """Shares of user/system/idle/steal/iowait over the window, summed over ``cpus``:
    {"cpus": [...], "user": 0.0-1.0, ...}, or {"cpus", "unavailable": why}."""
    delta = {name: 0 for name in _STAT_FIELDS}
    for cpu in cpus:
        if cpu not in before or cpu not in after:
            continue
        for name in _STAT_FIELDS:
            delta[name] += after[cpu].get(name, 0) - before[cpu].get(name, 0)
    total = sum(delta.values())
    listed: list[JsonValue] = [*sorted(cpus)]
    if total <= 0:
        return {"cpus": listed, "unavailable": "no CPU time elapsed"}
    shares = {
        "user": (delta["user"] + delta["nice"]) / total,
        "system": (delta["system"] + delta["irq"] + delta["softirq"]) / total,
        "idle": delta["idle"] / total,
        "iowait": delta["iowait"] / total,
        "steal": delta["steal"] / total,
    }
    return {"cpus": listed, **{k: round(v, 4) for k, v in shares.items()}}


class EventsLost(HostError):
    """The kernel dropped events the count needed: the evidence would be silently low."""


_HIST_KEY = re.compile(r"(\w+)(?:\.\w+)?:\s*([^,}]+?)\s*(?:,|})")
_HIST_HITS = re.compile(r"}\s*hitcount:\s*(\d+)")
_HIST_TOTAL = re.compile(r"^\s*(Hits|Entries|Dropped):\s*(\d+)\s*$", re.M)


@dataclass(frozen=True)
class Histogram:
    """A parsed tracefs ``hist`` file: one row per key tuple (field -> value as printed),
    its hitcount, and the kernel's totals (``Dropped`` > 0: the map was full and events
    were not counted). Format: kernel/trace/trace_events_hist.c (hist_show)."""

    rows: tuple[tuple[tuple[tuple[str, str], ...], int], ...]
    hits: int
    entries: int
    dropped: int

    def total_by(self, key: str) -> dict[str, int]:
        totals: dict[str, int] = {}
        for fields, count in self.rows:
            value = dict(fields).get(key)
            if value is not None:
                totals[value] = totals.get(value, 0) + count
        return totals


def parse_hist(text: str) -> Histogram:
    """Parse a ``hist`` file (pure); a file without the Totals block is a HostError."""
    rows: list[tuple[tuple[tuple[str, str], ...], int]] = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        hits = _HIST_HITS.search(line)
        if hits is None:
            continue
        keys = tuple((k, v.strip()) for k, v in _HIST_KEY.findall(line[: hits.start() + 1]))
        rows.append((keys, int(hits.group(1))))
    totals = {name: int(value) for name, value in _HIST_TOTAL.findall(text)}
    if "Hits" not in totals:
        raise HostError("a tracefs hist file without its Totals block: not a histogram")
    return Histogram(
        tuple(rows), totals["Hits"], totals.get("Entries", 0), totals.get("Dropped", 0)
    )


# kvm:kvm_exit keyed by vCPU thread and exit reason (per guest: a guest's vCPU threads are its
# QEMU's threads); kvm:kvm_ple_window_update keyed by vCPU. Hist triggers count in the kernel,
# so nothing is lost when the trace ring buffer would have wrapped (it is never read).
EXIT_TRIGGER = "hist:keys=common_pid,exit_reason:vals=hitcount:size=8192"
PLE_TRIGGER = "hist:keys=vcpu_id:vals=hitcount"


@dataclass
class ExitCounter:
    """Counts PAUSE exits (all kvm exits, by reason and vCPU thread) and PLE window updates
    with hist triggers in a private tracefs instance; events the kernel dropped fail the
    count (EventsLost) instead of making it silently low. Verified on an emulated VT-x CPU
    with PLE (Bochs, kvmple lab verify-ple)."""

    tracefs: Path
    module: str
    instance: Path = field(init=False)
    _armed: list[tuple[Path, str]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.instance = self.tracefs / "instances" / f"kvmple-{os.getpid()}"

    def __enter__(self) -> ExitCounter:
        self.instance.mkdir()
        events = self.instance / "events" / "kvm"
        self._arm(events / "kvm_exit", EXIT_TRIGGER)
        if (events / "kvm_ple_window_update").is_dir():
            self._arm(events / "kvm_ple_window_update", PLE_TRIGGER)
        return self

    def _arm(self, event: Path, trigger: str) -> None:
        (event / "trigger").write_text(trigger + "\n")
        self._armed.append((event, trigger))

    def histograms(self) -> dict[str, Histogram]:
        """Event name -> its histogram now (EventsLost when the kernel dropped any)."""
        found: dict[str, Histogram] = {}
        for event, _ in self._armed:
            hist = parse_hist((event / "hist").read_text())
            if hist.dropped:
                raise EventsLost(
                    f"{event.name}: the kernel dropped {hist.dropped} event(s) of "
                    f"{hist.hits + hist.dropped} (hist map full): the exit counts would be low",
                    hint="fewer guests or shorter windows per run; the map holds "
                    f"{hist.entries} keys",
                )
            found[event.name] = hist
        return found

    def counts(self) -> CountedExits:
        hists = self.histograms()
        exits = hists.get("kvm_exit")
        by_reason = exits.total_by("exit_reason") if exits else {}
        pause = by_reason.get(str(PAUSE_REASONS[self.module]), 0)
        updates = hists["kvm_ple_window_update"].hits if "kvm_ple_window_update" in hists else 0
        return {
            "pause_exits": pause,
            "ple_window_updates": updates,
            "exits": exits.hits if exits else 0,
            "exits_by_reason": dict(sorted(by_reason.items(), key=lambda kv: int(kv[0], 0))),
            "pause_exits_by_thread": _pause_by_thread(exits, PAUSE_REASONS[self.module]),
            "method": "tracefs hist triggers (no events dropped)",
        }

    def __exit__(self, *exc: object) -> None:
        for event, trigger in reversed(self._armed):
            with contextlib.suppress(OSError):
                (event / "trigger").write_text(f"!{trigger}\n")
        self._armed.clear()
        with contextlib.suppress(OSError):
            self.instance.rmdir()
        if self.instance.exists():  # a fake tree in tests is a plain directory
            shutil.rmtree(self.instance, ignore_errors=True)


def _pause_by_thread(exits: Histogram | None, reason: int) -> dict[str, int]:
    threads: dict[str, int] = {}
    for fields, count in exits.rows if exits else ():
        values = dict(fields)
        if values.get("exit_reason") == str(reason) and "common_pid" in values:
            threads[values["common_pid"]] = threads.get(values["common_pid"], 0) + count
    return threads


def exit_evidence_source(
    accelerator: str, kvm_module: str | None, tracefs: Path = Path("/sys/kernel/tracing")
) -> ExitCounter | str:
    """An ExitCounter, or the reason why PAUSE exits cannot be counted on this host."""
    if accelerator != "kvm":
        return "guests run under QEMU TCG: there are no VM exits, so no PAUSE exits to count"
    if kvm_module not in PAUSE_REASONS:
        return f"KVM module {kvm_module or 'unknown'} has no PLE/pause-filter exit to count"
    if not (tracefs / "events" / "kvm" / "kvm_exit").is_dir():
        return f"tracefs with kvm events not found at {tracefs} (mount tracefs, need root)"
    return ExitCounter(tracefs=tracefs, module=kvm_module)


@dataclass
class Window:
    """Host evidence over one timed window, filled in when :func:`collect`'s ``with`` body
    ends: ``seconds`` its wall time, ``host_cpu`` the pinned CPUs' shares (cpu_shares),
    ``kvm_exits`` the exit counts or why they are unavailable (a string)."""

    seconds: float | None = None
    host_cpu: dict[str, JsonValue] | None = None
    kvm_exits: CountedExits | str | None = None


@contextlib.contextmanager
def collect(
    cpus: frozenset[int],
    exits: ExitCounter | str,
    proc: Path = Path("/proc"),
) -> Iterator[Window]:
    """Collect evidence over the ``with`` body; the yielded :class:`Window` is filled in on
    exit (EventsLost from the exit counter when the kernel dropped events)."""
    window = Window()
    before = read_cpu_times(proc)
    start = time.monotonic()
    stack = contextlib.ExitStack()
    counter = stack.enter_context(exits) if isinstance(exits, ExitCounter) else None
    try:
        yield window
    finally:
        window.seconds = round(time.monotonic() - start, 3)
        window.host_cpu = cpu_shares(before, read_cpu_times(proc), cpus)
        window.kvm_exits = counter.counts() if counter is not None else str(exits)
        stack.close()

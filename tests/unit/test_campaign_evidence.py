"""Evidence and quietness from /proc and tracefs (fake trees with the kernel's layout, and
the real /proc of this host)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmple.campaign import quiet
from kvmple.campaign.evidence import (
    EXIT_TRIGGER,
    PLE_TRIGGER,
    EventsLost,
    ExitCounter,
    collect,
    cpu_shares,
    exit_evidence_source,
    parse_hist,
    read_cpu_times,
)
from kvmple.errors import HostError

# The kernel's hist format (kernel/trace/trace_events_hist.c, hist_show); the files captured
# from the Bochs lab host are checked in test_lab_hist_formats.
HIST_EXIT = """# event histogram
#
# trigger info: hist:keys=common_pid,exit_reason:vals=hitcount:sort=hitcount:size=8192 [active]
#

{ common_pid:        213, exit_reason:         40 } hitcount:          3
{ common_pid:        212, exit_reason:          1 } hitcount:          5
{ common_pid:        212, exit_reason:         40 } hitcount:         24

Totals:
    Hits: 32
    Entries: 3
    Dropped: 0
"""
HIST_PLE = """# event histogram
#
# trigger info: hist:keys=vcpu_id:vals=hitcount:sort=hitcount:size=2048 [active]
#

{ vcpu_id:          0 } hitcount:         29

Totals:
    Hits: 29
    Entries: 1
    Dropped: 0
"""

STAT = """cpu  100 0 50 800 10 0 0 5 0 0
cpu0 {u0} 0 {s0} {i0} 0 0 0 {st0} 0 0
cpu1 10 0 10 400 5 0 0 0 0 0
intr 1 2 3
"""


def _stat(tmp: Path, u0: int, s0: int, i0: int, st0: int) -> Path:
    proc = tmp / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "stat").write_text(STAT.format(u0=u0, s0=s0, i0=i0, st0=st0))
    return proc


def test_cpu_shares_from_fake_proc(tmp_path: Path) -> None:
    before = read_cpu_times(_stat(tmp_path, 100, 0, 100, 0))
    after = read_cpu_times(_stat(tmp_path, 150, 20, 120, 10))
    shares = cpu_shares(before, after, frozenset({0}))
    assert shares == {
        "cpus": [0],
        "user": 0.5,
        "system": 0.2,
        "idle": 0.2,
        "iowait": 0.0,
        "steal": 0.1,
    }
    assert "unavailable" in cpu_shares(after, after, frozenset({0}))


def test_real_proc_stat_has_every_cpu() -> None:
    times = read_cpu_times()
    assert set(times) >= {0} and all("idle" in t for t in times.values())


def test_exit_evidence_unavailable_under_tcg() -> None:
    reason = exit_evidence_source("tcg", "kvm_pvm")
    assert isinstance(reason, str) and "TCG" in reason
    assert "kvm_pvm" in str(exit_evidence_source("kvm", "kvm_pvm"))


def _fake_tracefs(root: Path) -> Path:
    for event in ("kvm_exit", "kvm_ple_window_update"):
        (root / "events" / "kvm" / event).mkdir(parents=True)
    (root / "instances").mkdir()
    return root


def test_exit_counter_against_fake_tracefs(tmp_path: Path) -> None:
    tracefs = _fake_tracefs(tmp_path / "tracing")
    counter = exit_evidence_source("kvm", "kvm_intel", tracefs)
    assert isinstance(counter, ExitCounter)

    def fake_kernel_creates_instance(instance: Path) -> None:
        # the real kernel populates a new instance directory with events/ and trace
        for event in ("kvm_exit", "kvm_ple_window_update"):
            os.makedirs(instance / "events" / "kvm" / event)

    original_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        original_mkdir(self)
        if self.parent.name == "instances":
            fake_kernel_creates_instance(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", mkdir)
        with collect(frozenset({0}), counter) as evidence:
            instance = counter.instance
            events = instance / "events/kvm"
            assert (events / "kvm_exit/trigger").read_text() == EXIT_TRIGGER + "\n"
            assert (events / "kvm_ple_window_update/trigger").read_text() == PLE_TRIGGER + "\n"
            assert not (events / "kvm_exit/enable").exists()  # the lossy buffer stays off
            (events / "kvm_exit/hist").write_text(HIST_EXIT)
            (events / "kvm_ple_window_update/hist").write_text(HIST_PLE)
    kvm_exits = evidence.kvm_exits
    assert isinstance(kvm_exits, dict)
    assert kvm_exits["pause_exits"] == 24 + 3
    assert kvm_exits["ple_window_updates"] == 29
    assert kvm_exits["exits_by_reason"] == {"1": 5, "40": 27}
    assert kvm_exits["pause_exits_by_thread"] == {"212": 24, "213": 3}
    assert not counter.instance.exists()
    assert evidence.host_cpu is not None and evidence.host_cpu["cpus"] == [0]


def test_dropped_events_fail_the_count(tmp_path: Path) -> None:
    counter = ExitCounter(tracefs=tmp_path, module="kvm_intel")
    for event in ("kvm_exit", "kvm_ple_window_update"):
        (counter.instance / "events/kvm" / event).mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", lambda self, *a, **k: None)  # the instance exists already
        with counter:
            (counter.instance / "events/kvm/kvm_exit/hist").write_text(
                HIST_EXIT.replace("Dropped: 0", "Dropped: 17")
            )
            (counter.instance / "events/kvm/kvm_ple_window_update/hist").write_text(HIST_PLE)
            with pytest.raises(EventsLost, match="dropped 17 event"):
                counter.counts()


def test_parse_hist_needs_the_totals() -> None:
    hist = parse_hist(HIST_EXIT)
    assert (hist.hits, hist.entries, hist.dropped) == (32, 3, 0)
    assert hist.total_by("exit_reason") == {"1": 5, "40": 27}
    with pytest.raises(HostError, match="Totals"):
        parse_hist("# event histogram\n")


def test_quietness_counts_foreign_load_only(tmp_path: Path) -> None:
    proc = _stat(tmp_path, 100, 0, 100, 0)
    (proc / "42").mkdir()
    (proc / "42" / "stat").write_text("42 (qemu) S " + " ".join(["0"] * 10) + " 30 10 0 0")

    def advance(_: float) -> None:
        _stat(tmp_path, 200, 0, 200, 0)  # 100 busy jiffies on cpu0
        (proc / "42" / "stat").write_text("42 (qemu) S " + " ".join(["0"] * 10) + " 70 30 0 0")

    result = quiet.measure(frozenset({0}), own_pids=[42], window=1.0, proc=proc, sleep=advance)
    # 100 busy jiffies, 60 of them ours -> 40 foreign jiffies in ~1 s
    assert result.foreign_cpus > 0
    assert "foreign load" in result.describe()


def test_quietness_on_this_host() -> None:
    result = quiet.measure(None, window=0.2)
    assert result.foreign_cpus >= 0

"""Evidence and quietness from /proc and tracefs (fake trees with the kernel's layout, and
the real /proc of this host)."""

from __future__ import annotations

import os
from pathlib import Path

from kvmple.campaign import quiet
from kvmple.campaign.evidence import (
    ExitCounter,
    collect,
    cpu_shares,
    exit_evidence_source,
    read_cpu_times,
)

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

    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "mkdir", mkdir)
        with collect(frozenset({0}), counter) as evidence:
            instance = counter.instance
            assert (instance / "events/kvm/kvm_exit/filter").read_text() == "exit_reason == 40\n"
            assert (instance / "events/kvm/kvm_exit/enable").read_text() == "1\n"
            (instance / "trace").write_text(
                "# tracer: nop\n"
                " qemu-1 [000] 1.0: kvm_exit: vcpu 0 reason PAUSE_INSTRUCTION rip 0x1 info 0 0\n"
                " qemu-1 [000] 1.1: kvm_exit: vcpu 1 reason PAUSE_INSTRUCTION rip 0x1 info 0 0\n"
                " qemu-1 [000] 1.2: kvm_ple_window_update: vcpu 0 old 4096 new 8192 (grow)\n"
            )
    assert evidence["kvm_exits"] == {"pause_exits": 2, "ple_window_updates": 1}
    assert not counter.instance.exists()
    assert evidence["host_cpu"]["cpus"] == [0]


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

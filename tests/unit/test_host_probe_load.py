"""The KVM probe's budget holds on a loaded host (issue 18, kind 9b): scaled by the measured
load, and one retry when the guest never ran at all (QEMU had not started it in time)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmple.host import kvmprobe
from kvmple.host.kvmprobe import ProbeOutcome, scaled_budget


@pytest.mark.parametrize(
    ("load1", "ncpus", "budget"),
    [(0.3, 2, 10.0), (2.0, 2, 10.0), (3.0, 2, 15.0), (6.0, 2, 30.0), (50.0, 2, 40.0), (1, 0, 10.0)],
)
def test_budget_scales_with_the_run_queue_beyond_the_cpus(
    load1: float, ncpus: int, budget: float
) -> None:
    assert scaled_budget(10.0, load1, ncpus) == pytest.approx(budget)


def _fake_probes(
    monkeypatch: pytest.MonkeyPatch, kvm_stages: list[str], tcg_seconds: float = 0.4
) -> list[float]:
    budgets: list[float] = []

    def fake(qemu: str, accel: str, timeout: float = 10.0) -> ProbeOutcome:
        if accel == "tcg":
            return ProbeOutcome("tcg", "passed", tcg_seconds, "PGLD", "booted")
        budgets.append(timeout)
        stages = kvm_stages[len(budgets) - 1]
        return ProbeOutcome("kvm", "timeout", timeout, stages, f"no exit within {timeout:g} s")

    monkeypatch.setattr(kvmprobe, "run_probe", fake)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return budgets


def test_a_guest_that_never_ran_is_retried_once_with_more_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    budgets = _fake_probes(monkeypatch, ["", "PGL"])
    dev = tmp_path / "kvm"
    dev.write_text("")
    probe = kvmprobe.boot_probe("qemu", "7.2.22", "kvm_pvm", dev, refresh=True)
    assert budgets == [20.0, 40.0]  # load 4 on 2 CPUs doubles the 10 s, the retry doubles it
    assert probe.kvm.stages == "PGL"
    assert "retried once; first: no exit within 20 s" in probe.kvm.detail


def test_a_guest_that_ran_is_not_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    budgets = _fake_probes(monkeypatch, ["P"])
    dev = tmp_path / "kvm"
    dev.write_text("")
    probe = kvmprobe.boot_probe("qemu", "7.2.22", "kvm_pvm", dev, refresh=True)
    assert budgets == [20.0]
    assert "retried" not in probe.kvm.detail


def test_the_budget_is_at_least_twice_the_tcg_control(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inside a lab host the machine under it is loaded, invisible to the lab host's load
    average: measured there, the TCG control took 12.4 s while the KVM probe had 10 s."""
    budgets = _fake_probes(monkeypatch, ["P"], tcg_seconds=12.4)
    dev = tmp_path / "kvm"
    dev.write_text("")
    kvmprobe.boot_probe("qemu", "7.2.22", "kvm_amd", dev, refresh=True)
    assert budgets == [pytest.approx(24.8)]

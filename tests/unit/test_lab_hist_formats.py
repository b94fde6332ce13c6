"""kvmple's counting against tracefs hist files captured inside the Bochs lab host (Linux
6.1, kvm_intel with PLE, the PAUSE-loop guest for 1 s of guest time per setting):
tests/data/lab/<setting>.<event>.hist, as the kernel printed them."""

from __future__ import annotations

from pathlib import Path

from kvmple.campaign.evidence import EXIT_TRIGGER, PLE_TRIGGER, parse_hist
from tests.fixtures.lab_hist import lab_counts

DATA = Path(__file__).parent.parent / "data" / "lab"


def test_captured_triggers_are_the_ones_kvmple_writes() -> None:
    exit_info = (DATA / "on.kvm_exit.hist").read_text()
    ple_info = (DATA / "on.kvm_ple_window_update.hist").read_text()
    # the kernel echoes the trigger with its defaults (sort, size) filled in
    assert EXIT_TRIGGER.replace(":size=8192", ":sort=hitcount:size=8192") in exit_info
    assert PLE_TRIGGER + ":sort=hitcount:size=2048" in ple_info


def test_ple_on_counts_pause_exits_of_one_vcpu_thread(tmp_path: Path) -> None:
    counts = lab_counts(tmp_path, "on-defaults")
    assert counts["pause_exits"] == 27 and counts["ple_window_updates"] == 33
    assert counts["exits_by_reason"] == {"1": 248, "40": 27, "48": 1}  # external irq, PAUSE, EPT
    assert counts["pause_exits_by_thread"] == {"91": 27}
    assert counts["exits"] == 276


def test_ple_off_counts_exactly_zero(tmp_path: Path) -> None:
    counts = lab_counts(tmp_path, "off")
    assert counts["pause_exits"] == 0 and counts["ple_window_updates"] == 0
    assert counts["exits_by_reason"] == {"1": 249, "48": 1}


def test_empty_histogram_parses_to_zero() -> None:
    hist = parse_hist((DATA / "off.kvm_ple_window_update.hist").read_text())
    assert (hist.hits, hist.entries, hist.dropped, hist.rows) == (0, 0, 0, ())

"""A run's KVM evidence: directed-yield statistics from fake debugfs trees, exit counts from
the hist files captured in the Bochs lab host (tests/data/lab), confounders from fake
/proc, /sys and /etc trees; the typed record's store round trip; and the report section
that shows it per cell beside the throughput, available or not."""

from __future__ import annotations

import json
from pathlib import Path

from kvmple.campaign.kvmevidence import (
    TCG_NO_KVM,
    YieldReader,
    exits_record,
    find_confounders,
    run_evidence,
)
from kvmple.host import kvmstats
from kvmple.results.analysis import CampaignAnalysis, analyse
from kvmple.results.evidence import (
    ConfounderFinding,
    ExitCounts,
    RunEvidence,
    Unavailable,
    YieldCounts,
    summarise_confounders,
    summarise_exits,
    summarise_yield,
)
from kvmple.results.html import render_html
from kvmple.results.jsonreport import analysis_dict
from kvmple.results.records import RunRecord
from kvmple.results.store import open_store
from kvmple.results.tables import evidence_table, render_markdown, render_text
from tests.fixtures.lab_hist import lab_counts
from tests.fixtures.synthetic import synthetic_campaign

FAST = 2000


def _vm(debugfs: Path, name: str, **stats: int) -> Path:
    directory = debugfs / "kvm" / name
    (directory / "vcpu0").mkdir(parents=True)  # per-vCPU subdirectories are not statistics
    for stat, value in {"exits": 100, "halt_exits": 3, **stats}.items():
        (directory / stat).write_text(f"{value}\n")
    return directory


def test_yield_statistics_of_a_qemu_pid(tmp_path: Path) -> None:
    vm = _vm(tmp_path, "4242-11", directed_yield_attempted=7, directed_yield_successful=5)
    _vm(tmp_path, "4243-11", directed_yield_attempted=99, directed_yield_successful=99)
    found = kvmstats.read_yield(4242, tmp_path)
    assert found == (vm, {"directed_yield_attempted": 7, "directed_yield_successful": 5})
    assert kvmstats.read_stat_dir(vm)["exits"] == 100


def test_yield_statistics_say_why_they_are_missing(tmp_path: Path) -> None:
    assert "debugfs not mounted" in str(kvmstats.read_yield(1, tmp_path))
    _vm(tmp_path, "77-9")  # a 5.10 kernel: no directed_yield_* files
    assert "has no KVM VM" in str(kvmstats.read_yield(1, tmp_path))
    old = kvmstats.read_yield(77, tmp_path)
    assert isinstance(old, str) and "directed_yield_attempted" in old and "5.13" in old
    _vm(tmp_path, "77-12")
    assert "2 KVM VMs" in str(kvmstats.read_yield(77, tmp_path))


def test_yield_reader_gives_the_change_over_the_window(tmp_path: Path) -> None:
    vm = _vm(tmp_path, "500-14", directed_yield_attempted=10, directed_yield_successful=4)
    reader = YieldReader("kvm", {"amqp": 500, "spin": None}, debugfs=tmp_path)
    reader.start()
    (vm / "directed_yield_attempted").write_text("25\n")
    (vm / "directed_yield_successful").write_text("9\n")
    found = reader.finish()
    assert found["amqp"] == YieldCounts(attempted=15, successful=5, source=str(vm))
    assert found["spin"] == Unavailable(unavailable="the guest's QEMU pid was not read back")


def test_yield_reader_under_tcg_reads_nothing(tmp_path: Path) -> None:
    _vm(tmp_path, "500-14", directed_yield_attempted=10, directed_yield_successful=4)
    reader = YieldReader("tcg", {"amqp": 500}, debugfs=tmp_path)
    reader.start()
    assert reader.finish() == {"amqp": Unavailable(unavailable=TCG_NO_KVM)}


def test_exit_counts_from_captured_hist_files_become_typed(tmp_path: Path) -> None:
    on = exits_record(lab_counts(tmp_path, "on-defaults"))
    assert isinstance(on, ExitCounts)
    assert (on.pause_exits, on.ple_window_updates, on.exits) == (27, 33, 276)
    assert on.exits_by_reason == {"1": 248, "40": 27, "48": 1}
    off = exits_record(lab_counts(tmp_path / "off", "off"))
    assert isinstance(off, ExitCounts) and off.pause_exits == 0
    assert exits_record("guests run under QEMU TCG") == Unavailable(
        unavailable="guests run under QEMU TCG"
    )


def test_confounders_from_fake_host_trees(tmp_path: Path) -> None:
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu vmx\n\n")
    params = sys_root / "module" / "kvm" / "parameters"
    params.mkdir(parents=True)
    (params / "halt_poll_ns").write_text("200000\n")
    modprobe = tmp_path / "etc" / "modprobe.d"
    modprobe.mkdir(parents=True)
    (modprobe / "tuned.conf").write_text("options kvm_intel ple_gap=0\n")
    found = find_confounders(proc, sys_root, tmp_path, release="6.1.0")
    assert isinstance(found, tuple)
    assert [(c.kind, c.detail) for c in found] == [
        ("modprobe-options", "options kvm_intel ple_gap=0"),
        ("halt-poll-ns", "halt_poll_ns=200000"),
    ]
    missing = find_confounders(tmp_path / "nowhere", sys_root, tmp_path, release="6.1.0")
    assert isinstance(missing, Unavailable) and "cpuinfo" in missing.unavailable


KVM_ON = run_evidence(
    {
        "exits": 300,
        "pause_exits": 40,
        "ple_window_updates": 12,
        "exits_by_reason": {"1": 260, "40": 40},
        "pause_exits_by_thread": {"91": 40},
        "method": "tracefs hist triggers (no events dropped)",
    },
    {"amqp": YieldCounts(attempted=6, successful=2, source="/sys/kernel/debug/kvm/9-11")},
    (ConfounderFinding(kind="halt-poll-ns", where="x", detail="halt_poll_ns=200000", effect="e"),),
)
TCG = run_evidence(
    "guests run under QEMU TCG: there are no VM exits, so no PAUSE exits to count",
    {"amqp": Unavailable(unavailable=TCG_NO_KVM)},
    (),
)


def test_typed_record_survives_the_store(tmp_path: Path) -> None:
    meta, runs = synthetic_campaign("store", runs_per_cell=1, sizes=(8,), ple=("on",))
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        store.create_campaign(meta)
        store.add_run(runs[0].model_copy(update={"kvm": KVM_ON}))
        store.add_run(runs[1].model_copy(update={"kvm": TCG}))
        store.add_run(runs[2])  # stored by an older kvmple: no record
        back = {r.run_key: r for r in store.runs(meta.id)}
    assert back[runs[0].run_key].kvm == KVM_ON
    assert back[runs[1].run_key].kvm == TCG
    assert back[runs[2].run_key].kvm is None
    # a version-1 record (no "kvm" key) still validates
    old = json.loads(runs[2].model_dump_json(exclude={"kvm"}))
    assert RunRecord.model_validate(old).kvm is None


def test_summaries_say_unavailable_with_the_reason() -> None:
    assert summarise_exits([KVM_ON]) == "40.0 PAUSE / 300.0 exits, 12.0 window updates per run"
    assert summarise_yield([KVM_ON]) == "6.0 attempted / 2.0 successful per run"
    assert summarise_confounders([KVM_ON]) == "halt-poll-ns: halt_poll_ns=200000"
    assert summarise_exits([TCG]).startswith("unavailable: guests run under QEMU TCG")
    assert summarise_yield([TCG]) == f"unavailable: {TCG_NO_KVM}"
    assert summarise_confounders([TCG]) == "none found"
    assert summarise_exits([]) == "not recorded"
    mixed = summarise_exits([KVM_ON, TCG])
    assert mixed.startswith("40.0 PAUSE") and "(1 run(s) unavailable)" in mixed
    broken = RunEvidence(exits=TCG.exits, confounders=Unavailable(unavailable="no /proc"))
    assert summarise_confounders([broken]) == "unavailable: no /proc"


def _with_evidence() -> CampaignAnalysis:
    meta, runs = synthetic_campaign("ev", runs_per_cell=3, sizes=(8,), ple=("off", "on"))
    runs = [r.model_copy(update={"kvm": KVM_ON if r.cell["ple"] == "on" else TCG}) for r in runs]
    return analyse(meta, runs, resamples=FAST)


def test_report_shows_evidence_beside_throughput() -> None:
    a = _with_evidence()
    table = evidence_table(a)
    assert table is not None
    assert table.header[:3] == ("cell", a.meta.primary_metric, "VM exits")
    rows = {row[0]: row for row in table.rows}
    on = next(row for label, row in rows.items() if "ple=on" in label)
    off = next(row for label, row in rows.items() if "ple=off" in label)
    assert "(±" in on[1] and on[2].startswith("40.0 PAUSE") and on[3].startswith("6.0 attempted")
    # each reason is said once, as a footnote the cells point to
    assert (off[2], off[3]) == ("unavailable [1]", "unavailable [2]")
    assert table.notes[0].startswith("[1] unavailable: guests run under QEMU TCG")
    assert table.notes[1] == f"[2] unavailable: {TCG_NO_KVM}"
    text = render_text(a)
    assert "evidence per cell (did the mechanism fire?)" in text
    assert "40.0 PAUSE / 300.0 exits" in text and "unavailable: guests run under QEMU TCG" in text
    assert "### evidence per cell" in render_markdown(a)
    html = render_html(a)
    assert "evidence per cell" in html and "6.0 attempted / 2.0 successful per run" in html
    cells = analysis_dict(a)["cells"]
    assert {c["kvm_evidence"]["runs"] for c in cells} == {3}


def test_report_without_kvm_evidence_has_no_section() -> None:
    meta, runs = synthetic_campaign("old", runs_per_cell=3, sizes=(8,), ple=("off",))
    a = analyse(meta, runs, resamples=FAST)
    assert evidence_table(a) is None
    assert "evidence per cell" not in render_text(a)
    assert analysis_dict(a)["cells"][0]["kvm_evidence"]["exits"] == "not recorded"


def test_a_ple_on_cell_with_a_ple_defeating_confounder_is_labelled() -> None:
    cpu_pm = ConfounderFinding(
        kind="overcommit-cpu-pm",
        where="pid 4242",
        detail="qemu-system-x86_64 -overcommit cpu-pm=on",
        effect="PLE is off for it",
    )
    meta, runs = synthetic_campaign("cpupm", runs_per_cell=3, sizes=(8,), ple=("off", "on"))
    defeated = KVM_ON.model_copy(update={"confounders": (cpu_pm,)})
    runs = [r.model_copy(update={"kvm": defeated}) for r in runs]
    a = analyse(meta, runs, resamples=FAST)
    labelled = [w for w in a.warnings if "overcommit-cpu-pm" in w]
    assert labelled and all("ple=on" in w and "PLE did not apply" in w for w in labelled)
    assert len(labelled) == 3  # the three ple=on cells (one per overcommit), not the off ones
    clean = analyse(meta, [r.model_copy(update={"kvm": KVM_ON}) for r in runs], resamples=FAST)
    assert not [w for w in clean.warnings if "PLE did not apply" in w]

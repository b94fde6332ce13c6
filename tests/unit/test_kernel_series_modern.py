"""The modern series manifests (PV sched yield 5.3, interrupt-delivery boost 5.3, the 5.13
directed-yield batch, the 2025 vCPU-debooster RFC) and the manifest keys they brought:
``knobs`` (tunables a playbook can use as factors) and ``benchmarks`` (what the authors
report). No kernel tree needed; the real tier checks the markers against Debian's 6.1."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.errors import ConfigError
from kvmple.kernel.apply import Status, apply_series
from kvmple.kernel.series import HashStatus, KnobKind, SourceKind, list_series, load_series
from kvmple.workloads import WORKLOADS
from tests.unit.kernel_fake_tree import _diff, make_tree

UPSTREAM = {  # name -> (landed_in, number of patches)
    "pv-sched-yield-v4": ("v5.3", 3),
    "boost-irq-delivery-v3": ("v5.3", 2),
    "directed-yield-5.13": ("v5.13", 6),
}


@pytest.mark.parametrize("name", list_series())
def test_every_shipped_manifest_loads(name: str) -> None:
    series, folder = load_series(name)
    assert series.name == folder.name == name
    # a hash called verified must be there; a benchmark's kvmple workload must exist
    assert all(p.upstream for p in series.patches if p.upstream_status is HashStatus.verified)
    assert {b.workload for b in series.benchmarks if b.workload} <= set(WORKLOADS)


def test_the_modern_series_are_shipped() -> None:
    assert set(UPSTREAM) | {"vcpu-debooster-v2", "yield-to-ple-v7"} <= set(list_series())


@pytest.mark.parametrize(("name", "expected"), sorted(UPSTREAM.items()))
def test_upstream_series_have_markers_and_a_git_source(
    name: str, expected: tuple[str, int]
) -> None:
    series, _ = load_series(name)
    assert (series.landed_in, len(series.patches)) == expected
    assert all(p.markers for p in series.patches)
    git = [s for s in series.sources if s.kind is SourceKind.git]
    assert series.landed_in is not None and git and git[0].range is not None
    assert git[0].range.endswith(series.landed_in)
    # an unverified or unknown hash says where the fact came from (or that none was found)
    assert all(p.note for p in series.patches if p.upstream_status is HashStatus.unknown)


def test_pv_sched_yield_names_the_guest_cpu_feature() -> None:
    series, _ = load_series("pv-sched-yield-v4")
    (knob,) = series.knobs
    assert (knob.name, knob.kind, knob.host_path) == (
        "kvm-pv-sched-yield",
        KnobKind.guest_cpu_feature,
        None,
    )
    assert [p.subject for p in series.patches][1] == "KVM: X86: Implement PV sched yield hypercall"


def test_debooster_rfc_is_under_review_with_its_knobs_and_benchmarks() -> None:
    series, _ = load_series("vcpu-debooster-v2")
    assert series.landed_in is None and series.base == "v6.19-rc1"
    assert len(series.patches) == 9 and not any(p.markers for p in series.patches)
    assert {s.kind for s in series.sources} == {SourceKind.mbox, SourceKind.lore}
    paths = {k.name: k.host_path for k in series.knobs}
    assert paths == {
        "/sys/kernel/debug/sched/vcpu_debooster_enabled": (
            "/sys/kernel/debug/sched/vcpu_debooster_enabled"
        ),
        "kvm.ipi_tracking_enabled": "/sys/module/kvm/parameters/ipi_tracking_enabled",
        "kvm.ipi_window_ns": "/sys/module/kvm/parameters/ipi_window_ns",
        "kvm.enable_relaxed_boost": "/sys/module/kvm/parameters/enable_relaxed_boost",
    }
    assert [b.name for b in series.benchmarks] == [
        "dbench",
        "PARSEC dedup (simlarge)",
        "PARSEC VIPS (simlarge)",
    ]
    assert series.benchmarks[0].workload == "dbench"


def _manifest(tmp_path: Path, knobs: str, patches: int = 2) -> Path:
    lines = ["name: x", "title: y", "patches:"]
    lines += [f"  - subject: p{i}" for i in range(patches)]
    (tmp_path / "series.yaml").write_text("\n".join(lines) + "\nknobs:\n" + knobs)
    return tmp_path


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ("  - {name: kvm, kind: module-param}\n", "is not <module>.<param>"),
        (
            "  - {name: kvm.a, kind: module-param, path: /sys/module/kvm/parameters/b}\n",
            "path must be /sys/module/kvm/parameters/a",
        ),
        ("  - {name: /proc/sys/x, kind: debugfs}\n", "is not a file under /sys/kernel/debug/"),
        ("  - {name: /sys/kernel/debug/../x, kind: debugfs}\n", "is not a file under"),
        ("  - {name: /etc/passwd, kind: sysfs}\n", "is not a file under /sys/"),
        ("  - {name: f, kind: guest-cpu-feature, path: /sys/x}\n", "has no host path"),
        ("  - {name: kvm.a, kind: module-param, values: [Y, N], default: X}\n", "not in values"),
        ("  - {name: kvm.a, kind: module-param, added_by: 3}\n", "added_by 3 but the series has 2"),
        ("  - {name: kvm.a, kind: module-param, added_by: 0}\n", "added_by"),
        ("  - {name: kvm.a, kind: cgroup}\n", "kind"),
        (
            "  - {name: kvm.a, kind: module-param}\n  - {name: kvm.a, kind: module-param}\n",
            "knob named more than once: kvm.a",
        ),
    ],
)
def test_bad_knob_is_one_config_error(tmp_path: Path, knobs: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_series(str(_manifest(tmp_path, knobs)))
    assert "series.yaml" in caught.value.message
    assert message in caught.value.message


def test_a_good_knob_and_benchmark(tmp_path: Path) -> None:
    folder = _manifest(
        tmp_path,
        "  - {name: /sys/kernel/debug/sched/x, kind: debugfs, values: ['0', '1'], default: '1'}\n"
        "benchmarks:\n  - {name: ebizzy, better: higher, reported: ['+17%']}\n",
    )
    series, _ = load_series(str(folder))
    assert series.knobs[0].host_path == "/sys/kernel/debug/sched/x"
    assert series.benchmarks[0].better == "higher"
    (tmp_path / "series.yaml").write_text(
        (tmp_path / "series.yaml").read_text().replace("better: higher", "better: faster")
    )
    with pytest.raises(ConfigError, match="better"):
        load_series(str(folder))


def test_series_show_lists_knobs_and_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "series", "show", "vcpu-debooster-v2"]) == 0
    shown = capsys.readouterr().out
    assert "base       v6.19-rc1" in shown
    assert "source     lore 20251219035334.39790-1-kernellwp@gmail.com" in shown
    assert (
        "knob       kvm.enable_relaxed_boost (module-param, "
        "/sys/module/kvm/parameters/enable_relaxed_boost) values Y|N default Y; added by patch 9"
    ) in shown
    assert "knob       /sys/kernel/debug/sched/vcpu_debooster_enabled (debugfs)" in shown
    assert "benchmark  dbench [kvmple workload dbench]; throughput, higher is better" in shown
    assert "2 VMs: +47.1%; 3 VMs: +28.1%; 4 VMs: +1.7%" in shown
    assert main(["kernel", "series", "show", "pv-sched-yield-v4"]) == 0
    shown = capsys.readouterr().out
    assert (
        "knob       kvm-pv-sched-yield (guest-cpu-feature) values on|off; added by patch 3" in shown
    )
    assert "715062970f37 (unverified)" in shown


def test_series_show_json_carries_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel", "series", "show", "vcpu-debooster-v2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [k["kind"] for k in data["knobs"]] == ["debugfs"] + ["module-param"] * 3
    assert data["benchmarks"][1]["reported"][0] == "2 VMs: +47.1%"


def test_debooster_rfc_applies_from_the_mbox_a_user_brings(tmp_path: Path) -> None:
    """The manifest's subjects (from the v2 cover letter) match a v2 mbox's patches: the
    cover letter is skipped and all nine apply in order to a (fake) v6.19-rc1 tree. The
    diffs are stand-ins, the subjects and the "[PATCH v2 n/9]" prefixes are the posting's."""
    series, folder = load_series("vcpu-debooster-v2")
    tree = make_tree(tmp_path / "linux", (6, 19, 0))
    box = mailbox.mbox(tmp_path / "v2.mbox")
    box.add(
        f"From: Wanpeng Li <kernellwp@gmail.com>\nSubject: [PATCH v2 0/9] {series.title}\n\n"
        "This series addresses long-standing yield_to() inefficiencies.\n"
    )
    for n, entry in enumerate(series.patches, 1):
        diff = _diff(tree, f"kernel/sched/stand-in-{n}.txt", f"patch {n}\n")
        box.add(
            f"From: Wanpeng Li <kernellwp@gmail.com>\nSubject: [PATCH v2 {n}/9] {entry.subject}"
            f"\n\nFrom: Wanpeng Li <wanpengli@tencent.com>\n\nstand-in\n---\n{diff}"
        )
    box.flush()
    report = apply_series(series, folder, tree, source=tmp_path / "v2.mbox", check_only=True)
    assert [r.status for r in report.results] == [Status.applied] * 9
    assert [r.subject for r in report.results] == [p.subject for p in series.patches]
    assert report.target is None and not (tree / "kernel/sched/stand-in-1.txt").exists()

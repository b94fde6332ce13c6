"""The typed hand-offs between stages: the build manifest, the boot pass and the night step
outputs round-trip, load what earlier kvmple versions wrote, and refuse a bad file with one
line naming the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple.campaign.model import CampaignOutcome
from kvmple.campaign.outcome import RunOutcome
from kvmple.cli import main
from kvmple.errors import BuildError, InputError, StoreError
from kvmple.kernel.bootpass import RECORD, load_pass
from kvmple.kernel.manifest import MANIFEST, BuildManifest, FragmentCheckRecord, load_manifest
from kvmple.nightly.outputs import (
    ApplyOutputs,
    BuildOutputs,
    CampaignOutputs,
    CompareOutputs,
    FetchOutputs,
    InstallOutputs,
)
from kvmple.nightly.state import NightState, load, save

# what `kvmple kernel build` wrote before the manifest was a model (no schema_version)
OLD_MANIFEST = {
    "release": "6.1.0-kvmple",
    "image": "/cache/out/arch/x86/boot/bzImage",
    "image_sha256": "ab" * 32,
    "config": "/cache/out/.config",
    "config_sha256": "cd" * 32,
    "base": "tinyconfig",
    "fragments": ["/cache/out/kvm_guest.config", "/cache/out/kvmple-boot.config"],
    "fragment_check": {
        "checked": 41,
        "other_arch": [],
        "allowed_to_vanish": ["CONFIG_X=y (kvmple-boot)"],
        "built_in_without_modules": [],
    },
    "modules": None,
    "tree": "/src/linux",
    "tree_version": "6.1.0",
    "series": {"series": "pv-spinlock", "method": "git am -3"},
    "out": "/cache/out",
    "jobs": 2,
    "ccache": True,
    "seconds": 612.3,
    "log": "/cache/out/build.log",
    "built_at": "2026-11-01T02:03:04+0000",
}


def _write(out: Path, data: object) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = BuildManifest(
        release="6.1.0",
        image=tmp_path / "bzImage",
        image_sha256="ab" * 32,
        config=tmp_path / ".config",
        fragments=("a.config",),
        fragment_check=FragmentCheckRecord(checked=3, other_arch=("CONFIG_Y=y (a)",)),
        modules=tmp_path / "modules-install",
        series={"series": "s"},
        seconds=1.5,
    )
    manifest.write(tmp_path / MANIFEST)
    assert not list(tmp_path.glob("*.tmp"))
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["schema_version"] == 1 and on_disk["image"] == str(tmp_path / "bzImage")
    again = load_manifest(tmp_path)
    assert again == manifest and again.series_name == "s"


def test_old_manifest_without_schema_version_loads_as_version_1(tmp_path: Path) -> None:
    _write(tmp_path, OLD_MANIFEST)
    manifest = load_manifest(tmp_path)
    assert manifest.schema_version == 1
    assert manifest.image == Path("/cache/out/arch/x86/boot/bzImage")
    assert manifest.fragment_check.allowed_to_vanish == ("CONFIG_X=y (kvmple-boot)",)
    assert manifest.modules is None and manifest.seconds == 612.3
    assert manifest.series_name == "pv-spinlock"
    # written again, it keeps every key it had (plus the version)
    assert json.loads(manifest.to_json()) == {"schema_version": 1, **OLD_MANIFEST}


def test_hand_written_minimal_manifest_loads_but_cannot_install(tmp_path: Path) -> None:
    _write(tmp_path, {"release": "6.1.0", "image": "/x", "image_sha256": "aa"})
    manifest = load_manifest(tmp_path)
    assert manifest.config is None and manifest.fragments == ()
    with pytest.raises(InputError, match=r"kvmple-build.json: config: required to install"):
        manifest.require_config()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**OLD_MANIFEST, "image_sha256": None}, r"kvmple-build.json: image_sha256: "),
        ({k: v for k, v in OLD_MANIFEST.items() if k != "release"}, r": release: required key"),
        ({**OLD_MANIFEST, "jobs": "many"}, r"kvmple-build.json: jobs: "),
        ({**OLD_MANIFEST, "fragment_check": {"checked": "x"}}, r": fragment_check.checked: "),
        ("{not json", r"kvmple-build.json: not valid JSON"),
        ("[1, 2]", r"kvmple-build.json: expected a JSON object"),
        ({**OLD_MANIFEST, "schema_version": 7}, r"schema_version 7 is newer than this kvmple"),
    ],
)
def test_bad_manifest_is_one_input_error_naming_file_and_key(
    tmp_path: Path, data: object, expected: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=expected) as caught:
        load_manifest(tmp_path)
    assert str(path) in caught.value.message and "\n" not in caught.value.message
    assert caught.value.hint and caught.value.exit_code == 3


def test_missing_manifest_is_still_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no finished kernel build here"):
        load_manifest(tmp_path)


def test_cli_bad_manifest_exit_3_one_line_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, {**OLD_MANIFEST, "image": 42})
    assert main(["kernel", "boot-test", "--build", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert f"{tmp_path / MANIFEST}: image: " in err and "hint: " in err
    assert "Traceback" not in err


def test_boot_pass_old_record_loads_and_a_bad_one_counts_as_no_pass(tmp_path: Path) -> None:
    old = {"passed": True, "release": "6.1.0", "accel": "tcg", "image_sha256": "ab" * 32}
    (tmp_path / RECORD).write_text(json.dumps({**old, "log": "c.log", "at": "then"}))
    record = load_pass(tmp_path)
    assert record is not None and record.kind == "initramfs" and record.image_sha256 == "ab" * 32
    (tmp_path / RECORD).write_text(json.dumps({"passed": True}))  # no image hash: no pass
    assert load_pass(tmp_path) is None
    (tmp_path / RECORD).write_text(json.dumps({**old, "passed": False}))
    assert load_pass(tmp_path) is None


def _state() -> NightState:
    return NightState("job", "n1", "/etc/job.yaml", "ab" * 32, "host", 100.0)


def test_step_outputs_round_trip_through_state_json(tmp_path: Path) -> None:
    state = _state()
    wt = tmp_path / "wt"
    made = {
        "fetch": FetchOutputs(
            tree="/srv/linux", ref="main", commit="c" * 40, subject="s", source=tmp_path
        ),
        "apply": ApplyOutputs(tree=wt, series="s", counts={"applied": 2}, worktree=wt),
        "build": BuildOutputs(release="6.1", image=wt / "bz", image_sha256="ab", out=tmp_path),
        "install": InstallOutputs(release="6.1", plan=("install a b",)),
        "compare": CompareOutputs(
            candidate="c2",
            baseline_campaign="c1",
            cell_verdicts=("no change",),
            details="compare.md",
            junit_cases="compare.xml",
        ),
    }
    for name, outputs in made.items():
        state.step(name).outputs = {"first_started": 100.0, **outputs.to_dict()}
    save(state, tmp_path)
    again = load(tmp_path)
    assert again is not None
    for name, outputs in made.items():
        assert again.outputs_of(name, type(outputs)) == outputs
        assert again.step(name).first_started == 100.0
    assert again.outputs_of("campaign", CampaignOutputs) is None  # not run


def test_earlier_night_outputs_load(tmp_path: Path) -> None:
    """Outputs as the dict-returning steps stored them (an apply without a series, a first
    night's compare) still read back."""
    state = _state()
    state.step("apply").outputs = {"first_started": 1.0, "tree": "/srv/linux"}
    state.step("compare").outputs = {
        "first_started": 2.0,
        "baseline_campaign": None,
        "candidate": "c1",
        "outcome": None,
        "details": "report.md",
        "junit_cases": "report.xml",
    }
    apply = state.need("apply", ApplyOutputs)
    assert apply.tree == Path("/srv/linux") and apply.worktree is None
    compare = state.need("compare", CompareOutputs)
    assert compare.baseline_campaign is None and compare.cell_verdicts == ()


def test_hand_edited_outputs_name_step_and_key() -> None:
    state = _state()
    state.step("build").outputs = {"first_started": 1.0, "release": "6.1", "out": "/o"}
    with pytest.raises(StoreError, match=r"steps\.build\.outputs\.image: Field required"):
        state.outputs_of("build", BuildOutputs)
    with pytest.raises(StoreError, match="step fetch recorded no outputs"):
        state.need("fetch", FetchOutputs)


def _fake_campaign(monkeypatch: pytest.MonkeyPatch, outcome: CampaignOutcome) -> list[object]:
    from kvmple.campaign import runner

    calls: list[object] = []

    def run_campaign(
        loaded: object, options: object, resume_id: str | None = None, **_: object
    ) -> object:
        calls.append((loaded, options, resume_id))
        return outcome

    monkeypatch.setattr(runner, "run_campaign", run_campaign)
    monkeypatch.setattr(runner, "campaign_report", lambda *a: calls.append("report"))
    return calls


def test_run_json_prints_only_the_outcome_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = CampaignOutcome(
        "c-20261129-1",
        planned=12,
        ok=10,
        failed=1,
        resumed_from=2,
        wall_seconds=300.0,
        measure_seconds=120.0,
        boots=2,
        boot_seconds=90.0,
        log_path=tmp_path / "campaign.log",
        db_url="postgresql://kvmple:s3cret@db.example/kvmple",
    )
    calls = _fake_campaign(monkeypatch, outcome)
    code = main(["run", "--resume", "c-20261129-1", "--db", "postgresql://x", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and "report" not in calls  # the report is for people
    (line,) = captured.out.splitlines()  # stdout holds the document and nothing else
    document = json.loads(line)
    assert document["schema_version"] == 1 and document["campaign_id"] == "c-20261129-1"
    assert (document["planned"], document["ok"], document["failed"]) == (12, 10, 1)
    assert document["overhead_ratio"] == 2.5 and document["log"] == str(tmp_path / "campaign.log")
    assert document["store"] == "postgresql://kvmple:***@db.example/kvmple"
    assert "s3cret" not in captured.out + captured.err
    assert "campaign c-20261129-1: 10 ok runs" in captured.err  # the summary line, for people
    assert RunOutcome.from_json(line, "stdout") == RunOutcome.from_outcome(outcome)


def test_run_json_nothing_measured_and_dry_run_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_campaign(monkeypatch, CampaignOutcome("c1", planned=4))
    assert main(["run", "--resume", "c1", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["overhead_ratio"] is None and document["store"] is None
    assert main(["run", "--dry-run", "playbooks/smoke.yaml", "--json"]) == 2


def test_run_json_one_line_per_campaign_of_a_workload_axis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvmple.campaign import playbook

    _fake_campaign(monkeypatch, CampaignOutcome("c-any", planned=4, ok=4))
    monkeypatch.setattr(playbook, "load_playbook", lambda path: path)
    monkeypatch.setattr(playbook, "variants", lambda loaded: ["amqp", "perftest", "spin"])
    assert main(["run", "axis.yaml", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(json.loads(x)["ok"] == 4 for x in lines)


def test_apply_record_in_a_manifest_keeps_its_keys(tmp_path: Path) -> None:
    """apply's full record, and an older partial one, come back with exactly their keys;
    a key of another type is named."""
    full = {
        "series": "pv-spinlock",
        "tree": "/src/linux",
        "method": "git am -3",
        "target": "/cache/work/pv",
        "branch": "kvmple/pv",
        "results": [
            {"index": 1, "subject": "x: y", "status": "applied", "detail": "", "origin": ""}
        ],
        "dropped": [],
        "revision": None,
        "note": "a key from a newer kvmple",
    }
    _write(tmp_path, {**OLD_MANIFEST, "series": full})
    manifest = load_manifest(tmp_path)
    assert manifest.series is not None and manifest.series.results is not None
    assert manifest.series.results[0].subject == "x: y"
    assert json.loads(manifest.to_json())["series"] == full
    _write(tmp_path, {**OLD_MANIFEST, "series": {**full, "revision": "two"}})
    with pytest.raises(InputError, match=r"kvmple-build.json: series.revision: "):
        load_manifest(tmp_path)

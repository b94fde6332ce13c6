"""The workload axis (issue 16): a playbook's ``workload_axis`` makes one campaign per measured
workload, each with the whole knob x axis matrix; the dry run shows every plan and the
total, ``kvmple run`` runs them in turn, each stored with its own playbook text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmple import cli, ui
from kvmple.campaign import runner
from kvmple.campaign.model import CampaignOptions
from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import load_playbook, parse_playbook, variants
from kvmple.errors import CampaignError, ConfigError
from tests.unit.test_campaign_hostfit import _host

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "playbooks" / "modern-matrix.yaml"
LAB_MODERN = ROOT / "playbooks" / "lab-modern.yaml"


def _expected_runs(path: Path) -> int:
    """The product of every axis of the playbook file, times its repetitions."""
    playbook = load_playbook(path).playbook
    factors = math.prod(len(f.values) for f in playbook.factors)
    axes = math.prod(len(a.values) for a in playbook.axes.values())
    return factors * axes * max(1, len(playbook.workload_axis)) * playbook.repetitions


def test_modern_matrix_dry_run_count_is_the_product_of_its_axes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_playbook(MATRIX)
    knobs = {f.knob for f in loaded.playbook.factors}
    assert {"ple", "cpu-pm", "kvm.halt_poll_ns"} <= knobs
    each = variants(loaded)
    assert [v.playbook.workloads["measured"].name for v in each] == ["dbench", "sysbench-threads"]
    expected = _expected_runs(MATRIX)
    assert sum(len(build_plan(v.playbook).runs) for v in each) == expected
    monkeypatch.setattr(runner, "read_host_for_dry_run", lambda factors=(): _host())
    assert cli.main(["run", "--dry-run", str(MATRIX)]) == 0
    out = capsys.readouterr().out
    assert "plan modern-matrix-dbench:" in out and "plan modern-matrix-sysbench-threads:" in out
    assert f"2 campaigns (dbench, sysbench-threads), {expected} runs in all" in out


def test_lab_modern_is_the_matrix_with_ple_recorded_unavailable_on_an_amd_lab_host() -> None:
    """lab-modern.yaml (bench/lab_modern.py runs it inside an amd lab host): PLE x cpu-pm x
    halt_poll_ns x two workloads, 16 runs; where PLE is unavailable (TCG's AMD-V has no pause
    filter) its values collapse into one, recorded as unavailable: 8 runs, each knob set kept."""
    each = variants(load_playbook(LAB_MODERN))
    names = [v.playbook.workloads["bench"].name for v in each]
    assert names == ["hackbench", "sysbench-threads"]
    assert sum(len(build_plan(v.playbook).runs) for v in each) == _expected_runs(LAB_MODERN) == 16
    no_ple = {"ple": "the (emulated) CPU has no pause filter"}
    plans = [build_plan(v.playbook, no_ple) for v in each]
    assert [len(p.runs) for p in plans] == [4, 4]
    for plan in plans:
        settings = {tuple(k for k in block.knobs if k[0] != "ple") for block in plan.blocks}
        assert settings == {
            (("cpu-pm", pm), ("kvm.halt_poll_ns", ns))
            for pm in ("off", "on")
            for ns in ("0", "200000")
        }
        assert dict(plan.unavailable) == no_ple


def test_variants_replace_the_measured_workload_and_round_trip() -> None:
    each = variants(load_playbook(MATRIX))
    dbench, sysbench = (v.playbook for v in each)
    assert dbench.name == "modern-matrix-dbench" and not dbench.workload_axis
    assert dict(dbench.workloads["measured"].params) == {"clients": 4, "time": 10}
    assert dict(sysbench.workloads["measured"].params) == {"threads": 4, "time": 10}
    assert sysbench.workloads["load"].name == "spin"
    for variant in each:  # the text stored with the campaign gives back the same playbook
        assert parse_playbook(variant.text, "stored").playbook == variant.playbook
    plain = load_playbook(ROOT / "playbooks" / "modern-overcommit.yaml")
    assert variants(plain) == (plain,)


@pytest.mark.parametrize(
    ("axis", "message", "name"),
    [
        ("[{name: dbench}, {name: dbench}]", "each workload may appear once", ""),
        ("[{name: hackbench}]", "the measured workload 'dbench' must be one of", ""),
        ("[{name: dbench}, {name: sysbench-threads}]", "over 41", "modern-matrix-with-a-long-name"),
        ("[{name: dbench, colour: red}]", "colour", ""),
        # a misspelt workload fails when the playbook loads (--dry-run: exit 3), not when
        # its campaign starts after the others have run for hours
        ("[{name: dbench}, {name: nosuchload}]", "unknown workload 'nosuchload'", ""),
    ],
)
def test_bad_workload_axis(axis: str, message: str, name: str) -> None:
    text = MATRIX.read_text()
    if name:
        text = text.replace("name: modern-matrix\n", f"name: {name}\n", 1)
    start = text.index("workload_axis:")
    end = text.index("factors:")
    bad = text[:start] + f"workload_axis: {axis}\n\n" + text[end:]
    with pytest.raises(ConfigError, match=message):
        parse_playbook(bad, "bad.yaml")


@dataclass
class _Outcome:
    name: str

    def summary(self) -> str:
        return f"campaign of {self.name}"


def test_run_runs_one_campaign_per_workload(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[Any] = []
    sinks: list[object] = []

    def fake_run(loaded: Any, options: CampaignOptions, **kwargs: object) -> _Outcome:
        ran.append(loaded)
        sinks.append(kwargs.get("sink"))
        return _Outcome(loaded.playbook.name)

    monkeypatch.setattr(runner, "run_campaign", fake_run)
    assert cli.main(["run", str(MATRIX), "--no-report"]) == 0
    assert [v.playbook.name for v in ran] == [
        "modern-matrix-dbench",
        "modern-matrix-sysbench-threads",
    ]
    assert "workload_axis" not in ran[1].text and "sysbench-threads" in ran[1].text
    assert "campaign of modern-matrix-sysbench-threads" in capsys.readouterr().out
    # the command draws what the campaigns report: one renderer for the whole axis
    assert isinstance(sinks[0], ui.Renderer) and sinks == [sinks[0]] * 2


def test_run_campaign_refuses_the_whole_axis() -> None:
    with pytest.raises(CampaignError, match="workload_axis makes one campaign per workload"):
        runner.run_campaign(load_playbook(MATRIX), CampaignOptions())


def test_fleet_refuses_the_axis(capsys: pytest.CaptureFixture[str]) -> None:
    inventory = ROOT / "examples" / "nightly" / "fleet.yaml"
    assert cli.main(["fleet", "run", str(inventory), str(MATRIX)]) == 2
    assert "fleet runs take a playbook without workload_axis" in capsys.readouterr().err


def test_unknown_measured_workload_fails_when_the_playbook_loads() -> None:
    bad = MATRIX.read_text().replace("    name: dbench\n", "    name: dbnech\n", 1)
    with pytest.raises(ConfigError, match=r"workloads\.measured\.name: unknown workload 'dbnech'"):
        parse_playbook(bad, "bad.yaml")


def test_unquoted_on_off_names_the_yaml_pitfall() -> None:
    # YAML 1.1 reads [on, off] as [true, false]; the error used to be "Input should be a
    # valid string (and 2 more problems)"
    bad = MATRIX.read_text().replace('values: ["on", "off"]', "values: [on, off]", 1)
    assert bad != MATRIX.read_text()
    with pytest.raises(ConfigError, match=r"factors\.3\.values: .*quote the settings"):
        parse_playbook(bad, "bad.yaml")


def test_unknown_workload_parameters_fail_at_load_naming_entry_and_key(tmp_path: Path) -> None:
    text = MATRIX.read_text()
    cases = {
        "    params: {threads: 4, time: 10}\n": (
            "    params: {threads: 4, time: 10, bogus: 3}\n",
            r":\d+: workload_axis\.1\.params: bogus: not a parameter of sysbench-threads "
            r"\(parameters of sysbench-threads: threads, time, yields, locks\)",
        ),
        "    params: {clients: 4, time: 10}\n": (
            "    params: {clients: 4, time: ten}\n",
            r"workloads\.measured\.params: time: Input should be a valid integer",
        ),
        "{values: [0, 2], guest: load, param: count}": (
            "{values: [0, 2], guest: load, param: cout}",
            r"axes\.spinners: cout: not a parameter of spin",
        ),
    }
    for original, (changed, message) in cases.items():
        assert original in text
        path = tmp_path / "bad.yaml"
        path.write_text(text.replace(original, changed))
        with pytest.raises(ConfigError, match=message):
            load_playbook(path)


def test_an_axis_on_the_measured_guest_must_suit_every_workload_of_the_axis() -> None:
    text = MATRIX.read_text().replace(
        "  spinners: {values: [0, 2], guest: load, param: count}",
        "  spinners: {values: [0, 2], guest: load, param: count}\n"
        "  clients: {values: [2, 4], guest: measured, param: clients}",
    )
    with pytest.raises(
        ConfigError, match=r"workload_axis\.1 \(sysbench-threads\): axes\.clients: clients: not a"
    ):
        parse_playbook(text, "m.yaml")

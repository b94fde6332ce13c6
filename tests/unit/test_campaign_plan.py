"""Playbook validation and plan expansion (pure)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kvmple.campaign.plan import UNAVAILABLE, build_plan
from kvmple.campaign.playbook import load_playbook, parse_playbook
from kvmple.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RFC = ROOT / "playbooks" / "rfc-v7-ple-overcommit.yaml"
SMOKE = ROOT / "playbooks" / "smoke.yaml"


def test_rfc_plan_has_360_runs_in_two_groups() -> None:
    plan = build_plan(load_playbook(RFC).playbook)
    assert len(plan.runs) == 360
    assert [b.knob_key for b in plan.blocks] == ["ple=off", "ple=on"]
    assert plan.knob_changes == 2
    cells = Counter(run.cell.key for run in plan.runs)
    assert len(cells) == 12 and set(cells.values()) == {30}
    assert len({run.key for run in plan.runs}) == 360


def test_rfc_overcommit_is_derived() -> None:
    plan = build_plan(load_playbook(RFC).playbook)
    by_spinners = {r.cell.as_dict()["spinners"]: r.overcommit for r in plan.runs}
    assert by_spinners == {0: 1.0, 2: 1.5, 4: 2.0}
    smoke = build_plan(load_playbook(SMOKE).playbook)
    assert {r.cell.as_dict()["spinners"]: r.overcommit for r in smoke.runs} == {
        0: 1.0,
        1: 1.5,
        2: 2.0,
    }


def test_axis_values_reach_workload_params() -> None:
    plan = build_plan(load_playbook(SMOKE).playbook)
    run = next(
        r for r in plan.runs if r.cell.as_dict() == {"ple": "off", "spinners": 2, "size": 16}
    )
    assert run.params_for("spin") == {"count": 2}
    assert run.params_for("amqp")["size"] == 16 and run.params_for("amqp")["npubs"] == 1


def test_unavailable_factor_collapses_and_is_recorded() -> None:
    plan = build_plan(load_playbook(SMOKE).playbook, unavailable={"ple": "no VT-x"})
    assert len(plan.blocks) == 1 and len(plan.runs) == 18
    assert {r.cell.as_dict()["ple"] for r in plan.runs} == {UNAVAILABLE}
    assert plan.unavailable == (("ple", "no VT-x"),)


def test_order_is_seeded_and_randomised() -> None:
    playbook = load_playbook(SMOKE).playbook
    first = [r.key for r in build_plan(playbook).runs]
    assert first == [r.key for r in build_plan(playbook).runs]
    ordered = [
        r.key
        for r in build_plan(
            playbook.model_copy(
                update={"order": playbook.order.model_copy(update={"randomize": False})}
            )
        ).runs
    ]
    assert sorted(first) == sorted(ordered) and first != ordered
    other = playbook.model_copy(update={"order": playbook.order.model_copy(update={"seed": 99})})
    assert [r.key for r in build_plan(other).runs] != first


def test_interleave_alternates_groups() -> None:
    playbook = load_playbook(RFC).playbook
    abab = playbook.model_copy(
        update={"order": playbook.order.model_copy(update={"interleave": 3})}
    )
    plan = build_plan(abab)
    assert [b.knob_key for b in plan.blocks] == ["ple=off", "ple=on"] * 3
    assert len(plan.runs) == 360 and plan.knob_changes == 6
    assert len({r.key for r in plan.runs}) == 360


def test_estimate() -> None:
    plan = build_plan(load_playbook(RFC).playbook)
    assert plan.estimate_seconds(boot_s=60, run_s=15, knob_s=10) == 2 * 60 + 2 * 10 + 360 * 15


BASE = """
name: t
guests:
  a: {image: x, vcpus: 2, pin: [0, 1]}
  b: {image: x, vcpus: 2, pin: "0-1"}
workloads:
  a: {name: amqp-perftest, role: measure}
  b: {name: spin, role: load}
axes:
  n: {values: [0, 1], guest: b, param: count}
repetitions: 2
"""


def test_minimal_playbook_parses() -> None:
    loaded = parse_playbook(BASE, "t.yaml")
    assert loaded.playbook.guests["b"].pin == ((0,), (1,))
    assert len(build_plan(loaded.playbook).runs) == 4
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("pin: [0, 1]}", "pin: [0]}"), r"t.yaml:4: guests.a: .*pin lists 1 entries for 2 vCPUs"),
        (("role: load", "role: measure"), "exactly one workload must have role 'measure'"),
        (("guest: b", "guest: c"), r"axes.n.guest: 'c' runs no workload"),
        (("repetitions: 2", "repetitions: 0"), r"t.yaml:11: repetitions: .*greater than 0"),
        (("repetitions: 2", "repetitions: 2\ncolour: red"), r"t.yaml:12: colour: unknown key"),
        (('pin: "0-1"', 'pin: "1-0"'), "bad CPU range"),
        (("values: [0, 1]", "values: [1, 1]"), "values must be distinct"),
    ],
)
def test_bad_playbooks_name_line_and_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_playbook(BASE.replace(*change), "t.yaml")


def test_campaign_ids_fit_domain_names() -> None:
    from kvmple.campaign.runner import _campaign_id
    from kvmple.vm.spec import check_name_part

    for name in ("rfc-v7-ple-overcommit", "smoke", "a" * 41):
        campaign = _campaign_id(name)
        check_name_part("campaign id", campaign)
        assert campaign != _campaign_id(name)  # random tail: same-second starts differ

"""The knob registry and its driver against fake Intel, AMD, no-PLE and kvm_pvm trees.

The PLE knob is the real code down to the module loader (the fake rewrites sysfs as
``modprobe`` would); a recording knob checks the driver's order and its clean-up.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvmple.campaign.playbook import parse_playbook
from kvmple.errors import ConfigError, HostError
from kvmple.host import knobs, ple, ple_state
from kvmple.host.kvmmodule import KVM_AMD, KVM_INTEL
from kvmple.host.seam import HostSeam
from tests.fixtures.fake_host import FakeHost, make_fake_host

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def intel(tmp_path: Path) -> FakeHost:
    return make_fake_host(tmp_path, "intel")


def test_registry_names_each_knob_once() -> None:
    assert all(name == knob.name for name, knob in knobs.REGISTRY.items())
    assert knobs.get("ple").title == "PLE"
    with pytest.raises(HostError, match="unknown host knob 'colour'") as info:
        knobs.get("colour")
    assert "ple" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("intel", None),
        ("amd", None),
        ("intel-nople", "lacks ple"),
        ("amd-nople", "lacks pausefilter"),
        ("pvm", "kvm_pvm, which has no pause-loop-exiting parameters"),
    ],
)
def test_ple_availability(tmp_path: Path, kind: str, reason: str | None) -> None:
    host = make_fake_host(tmp_path, kind)  # type: ignore[arg-type]
    why = knobs.get("ple").available(host.seam())
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why
    assert host.loader.calls == []


def test_unavailable_under_tcg_gives_the_knob_reason_or_the_host_reason(tmp_path: Path) -> None:
    intel = make_fake_host(tmp_path / "i", "intel").seam()
    pvm = make_fake_host(tmp_path / "p", "pvm").seam()
    assert knobs.unavailable(["ple"], intel, accelerator="kvm", host_reason="") == {}
    assert knobs.unavailable(["ple"], intel, accelerator="tcg", host_reason="no VT-x") == {
        "ple": "no VT-x"
    }
    assert knobs.unavailable(["ple"], intel, accelerator="tcg", host_reason="") == {
        "ple": "PLE is not available"
    }
    missing = knobs.unavailable(["ple"], pvm, accelerator="tcg", host_reason="no VT-x")
    assert "kvm_pvm" in missing["ple"]
    assert knobs.unavailable([], pvm, accelerator="tcg", host_reason="x") == {}


@pytest.mark.parametrize(("kind", "spec"), [("intel", KVM_INTEL), ("amd", KVM_AMD)])
def test_applied_sets_reads_back_and_restores(tmp_path: Path, kind: str, spec: object) -> None:
    host = make_fake_host(tmp_path, kind)  # type: ignore[arg-type]
    seam = host.seam()
    said: list[str] = []
    with knobs.applied(
        [("ple", "off")], seam, announce=lambda k, s: said.append(f"{k.title} {s}")
    ) as done:
        stored = done["ple"].to_json()
        assert stored["setting"] == "off"
        assert stored["enabled"] is False
        assert stored["module"] == spec.module  # type: ignore[attr-defined]
        assert host.param(spec.module, spec.switch) == "0"  # type: ignore[attr-defined]
    assert said == ["PLE off"]
    assert ple.read_knobs(seam).values == spec.defaults()  # type: ignore[attr-defined]
    assert ple_state.load() is None  # back at the originals
    assert len(host.loader.calls) == 2


def test_applied_restores_the_state_read_before_not_the_defaults(intel: FakeHost) -> None:
    seam = intel.seam()
    ple.set_mode(seam, "off")  # the host was left with PLE off before the campaign
    with knobs.applied([("ple", "on")], seam) as done:
        assert done["ple"].to_json()["enabled"] is True
    assert intel.param("kvm_intel", "ple_gap") == "0"


def test_applied_restores_on_error_and_on_ctrl_c(intel: FakeHost) -> None:
    seam = intel.seam()
    for error in (RuntimeError("campaign failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)), knobs.applied([("ple", "off")], seam):
            assert intel.param("kvm_intel", "ple_gap") == "0"
            raise error
        assert intel.param("kvm_intel", "ple_gap") == "128"
    assert len(intel.loader.calls) == 4


def test_unavailable_knob_raises_and_changes_nothing(tmp_path: Path) -> None:
    host = make_fake_host(tmp_path, "pvm")
    with (
        pytest.raises(HostError, match="PLE is not available"),
        knobs.applied([("ple", "on")], host.seam()),
    ):
        pytest.fail("must not enter")
    assert host.loader.calls == []


def test_refused_change_changes_nothing(intel: FakeHost) -> None:
    intel.root_user = False
    with (
        pytest.raises(HostError, match="run as root"),
        knobs.applied([("ple", "off")], intel.seam()),
    ):
        pytest.fail("must not enter")
    assert intel.loader.calls == []
    assert intel.param("kvm_intel", "ple_gap") == "128"


def test_differing_read_back_raises_and_the_first_error_wins(intel: FakeHost) -> None:
    intel.loader.clamp = {"ple_window": 1000}
    with (
        pytest.raises(HostError, match="ple_window wanted 4096 got 1000"),
        knobs.applied([("ple", "off")], intel.seam()),
    ):
        pytest.fail("must not enter")
    # the apply reloaded, so the driver tried to put the previous values back as well
    assert [options["ple_gap"] for _, options in intel.loader.calls] == [0, 128]
    assert ple_state.load() is not None  # the originals stay for 'kvmple ple restore'


@dataclass(frozen=True)
class _Reading:
    value: str

    def to_json(self) -> dict[str, object]:
        return {"value": self.value}


@dataclass
class _Recorder(knobs.Knob):
    """A knob over a dict, recording every operation (``fail_apply``: raise after changing)."""

    name = "rec"
    title = "REC"
    settings = ("a", "b")
    needs_kvm = False
    label: str = "rec"
    state: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    fail_apply: bool = False
    fail_restore: bool = False

    def available(self, seam: HostSeam) -> str | None:
        return None

    def read(self, seam: HostSeam) -> _Reading:
        return _Reading(self.state.get(self.label, "-"))

    def apply(self, seam: HostSeam, setting: str) -> _Reading:
        self.events.append(f"apply {self.label}={setting}")
        self.state[self.label] = setting
        if self.fail_apply:
            raise HostError(f"{self.label} read back differently")
        return self.read(seam)

    def restore(self, seam: HostSeam, before: knobs.KnobReading) -> _Reading:
        assert isinstance(before, _Reading)
        self.events.append(f"restore {self.label}={before.value}")
        if self.fail_restore:
            raise HostError(f"{self.label} cannot be restored")
        self.state[self.label] = before.value
        return self.read(seam)


def _two_knobs(monkeypatch: pytest.MonkeyPatch, **second: bool) -> tuple[list[str], dict[str, str]]:
    events: list[str] = []
    state: dict[str, str] = {}
    first = _Recorder(label="one", state=state, events=events)
    other = _Recorder(label="two", state=state, events=events, **second)
    monkeypatch.setitem(knobs.REGISTRY, "one", first)
    monkeypatch.setitem(knobs.REGISTRY, "two", other)
    return events, state


def test_driver_restores_in_reverse_order(monkeypatch: pytest.MonkeyPatch, intel: FakeHost) -> None:
    events, state = _two_knobs(monkeypatch)
    with knobs.applied([("one", "a"), ("two", "b")], intel.seam()) as done:
        assert {k: v.to_json() for k, v in done.items()} == {
            "one": {"setting": "a", "value": "a"},
            "two": {"setting": "b", "value": "b"},
        }
    assert events == ["apply one=a", "apply two=b", "restore two=-", "restore one=-"]
    assert state == {"one": "-", "two": "-"}


def test_driver_restores_what_it_touched_when_an_apply_fails(
    monkeypatch: pytest.MonkeyPatch, intel: FakeHost
) -> None:
    events, _ = _two_knobs(monkeypatch, fail_apply=True)
    with (
        pytest.raises(HostError, match="two read back differently"),
        knobs.applied([("one", "a"), ("two", "b")], intel.seam()),
    ):
        pytest.fail("must not enter")
    assert events == ["apply one=a", "apply two=b", "restore two=-", "restore one=-"]


def test_a_failing_restore_does_not_stop_the_others(
    monkeypatch: pytest.MonkeyPatch, intel: FakeHost
) -> None:
    events, state = _two_knobs(monkeypatch, fail_restore=True)
    with (
        pytest.raises(HostError, match="two cannot be restored"),
        knobs.applied([("one", "a"), ("two", "b")], intel.seam()),
    ):
        pass
    assert events[-2:] == ["restore two=-", "restore one=-"]
    assert state["one"] == "-"
    with (
        pytest.raises(RuntimeError, match="first"),
        knobs.applied([("one", "a"), ("two", "b")], intel.seam()),
    ):
        raise RuntimeError("first")


PLAYBOOK = """\
name: t
guests:
  a: {image: debian12-amqp, vcpus: 1, memory_mib: 512, pin: [0]}
workloads:
  a: {name: amqp-perftest, role: measure}
factors:
  - knob: ple
    values: ["off", "on"]
repetitions: 1
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("knob: ple", "knob: colour"),
            r"factors.0.knob: .*unknown host knob .colour. "
            r"\(known knobs: cpu-pm, ple, pv.sched_yield, pv.unhalt, a KVM",
        ),
        (('"off", "on"', '"off", "max"'), r"knob 'ple' takes 'on' or 'off', not 'max'"),
    ],
)
def test_playbook_factors_are_checked_against_the_registry(
    change: tuple[str, str], message: str
) -> None:
    assert parse_playbook(PLAYBOOK, "t.yaml").playbook.factors[0].values == ("off", "on")
    with pytest.raises(ConfigError, match=message):
        parse_playbook(PLAYBOOK.replace(*change), "t.yaml")


def test_no_knob_name_outside_the_registry() -> None:
    """The campaign and `kvmple run` ask the registry; none of them tests for a knob's name."""
    files = [*sorted((ROOT / "kvmple/campaign").glob("*.py")), ROOT / "kvmple/commands/run.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value.lower() not in knobs.REGISTRY, f"{path}: {node.value!r}"

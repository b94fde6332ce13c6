"""Host fit before anything is created (issue 18, kind 8): `run --dry-run` lists every
requirement the host misses; a real run refuses before it creates a campaign or a store."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple import cli
from kvmple.campaign import runner
from kvmple.campaign.hostfit import host_fit
from kvmple.campaign.model import HostFacts
from kvmple.campaign.playbook import load_playbook
from kvmple.host import knobs
from kvmple.host.topology import read_mem_available_mib
from tests.fixtures.fake_host import make_fake_host

ROOT = Path(__file__).resolve().parents[2]


def _host(
    *, online: tuple[int, ...] = (0, 1), mem: int | None = 20000, ple: bool = False
) -> HostFacts:
    return HostFacts(
        accelerator="tcg",
        verdict="tcg",
        reason="no VT-x",
        kvm_module="kvm_pvm",
        unavailable_knobs={} if ple else {"ple": "the KVM module is kvm_pvm"},
        facts={"hostname": "h", "kernel_release": "6.1", "accelerator": "tcg"},
        online_cpus=online,
        mem_available_mib=mem,
    )


def _playbook(tmp_path: Path, pin: str = "[0, 1]", memory: int = 768) -> Path:
    text = (ROOT / "playbooks" / "smoke.yaml").read_text()
    text = text.replace("pin: [0, 1]", f"pin: {pin}", 1).replace(
        "memory_mib: 768", f"memory_mib: {memory}"
    )
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_smoke_fits_a_two_cpu_host_except_ple(tmp_path: Path) -> None:
    playbook = load_playbook(_playbook(tmp_path)).playbook
    assert [u.requirement for u in host_fit(playbook, _host())] == ["PLE"]
    assert host_fit(playbook, _host(ple=True)) == []


def test_every_unmet_requirement_is_listed(tmp_path: Path) -> None:
    playbook = load_playbook(_playbook(tmp_path, pin="[0, 999]", memory=99000)).playbook
    described = [u.describe() for u in host_fit(playbook, _host())]
    assert described == [
        "pinned CPUs: guest 'amqp' pins CPU(s) 999, which this host does not have (online: 0-1)",
        "memory: the guests need 100536 MiB together (amqp 1536, spin 99000); this host has "
        "20000 MiB available (MemAvailable)",
        "PLE: the KVM module is kvm_pvm",
    ]


def test_emulator_pins_and_unknown_facts(tmp_path: Path) -> None:
    text = (
        _playbook(tmp_path)
        .read_text()
        .replace("pin: [0, 1]\n", "pin: [0, 1]\n    emulator_pin: '2-3'\n", 1)
    )
    (tmp_path / "e.yaml").write_text(text)
    playbook = load_playbook(tmp_path / "e.yaml").playbook
    assert "CPU(s) 2-3" in host_fit(playbook, _host(ple=True))[0].detail
    # unknown online CPUs / memory: nothing is claimed about them
    assert host_fit(playbook, _host(online=(), mem=None, ple=True)) == []


def test_mem_available_is_read_in_mib(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:       24000000 kB\nMemAvailable:   2048000 kB\n")
    assert read_mem_available_mib(tmp_path) == 2000
    assert read_mem_available_mib(tmp_path / "missing") is None


def test_dry_run_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "read_host_for_dry_run", lambda factors=(): _host(online=(0,)))
    assert cli.main(["run", "--dry-run", str(_playbook(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "does not meet 3 requirement(s)" in out
    assert "pins CPU(s) 1, which this host does not have (online: 0)" in out
    assert "refuses this playbook here before creating anything" in out


def test_real_run_refuses_before_creating_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runner, "_read_host", lambda factors=(), probe_kvm=True: _host())

    def no_store(url: str | None) -> None:
        raise AssertionError("the store must not be opened for a host that does not fit")

    monkeypatch.setattr(runner, "open_store", no_store)
    path = _playbook(tmp_path, pin="[999, 1]")
    assert cli.main(["run", str(path), "--allow-unavailable"]) == 4
    err = capsys.readouterr().err
    assert "does not fit playbook 'smoke', nothing was created" in err
    assert "pins CPU(s) 999" in err and "PLE" not in err.split("hint")[0]
    assert cli.main(["run", str(path)]) == 4  # without --allow-unavailable PLE is listed too
    assert "PLE: the KVM module is kvm_pvm" in capsys.readouterr().err


def test_campaign_records_how_ple_was_decided(tmp_path: Path) -> None:
    """Campaigns give the doctor's answer and say how it was decided (kind 1): the PLE knob's
    reason, which the campaign records for an unavailable factor, names the basis."""
    seam = make_fake_host(tmp_path, "intel-nople").seam()
    reason = knobs.get("ple").available(seam)
    assert reason is not None and "(decided by /proc/cpuinfo 'vmx flags')" in reason
    playbook = load_playbook(_playbook(tmp_path)).playbook
    host = _host()
    host.unavailable_knobs["ple"] = reason
    assert runner._unavailable_factors(playbook, host, True) == {"ple": reason}

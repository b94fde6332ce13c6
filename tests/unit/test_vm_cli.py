"""`kvmple vm` / `kvmple gc` bad input: one line, a distinct exit code, nothing built or left."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple import paths
from kvmple.cli import main
from kvmple.vm import registry
from tests.unit.test_vm_registry import dead_pid, make_record


@pytest.mark.parametrize(
    ("spec", "code", "fragment"),
    [
        ("a=debian12-amqp,pins=0/4096", 3, "vCPU 1 pins host CPU 4096, which does not exist"),
        ("a=debian12-amqp,pins=0/0/0", 3, "3 pin sets for 2 vCPUs"),
        ("A=debian12-amqp", 3, "role 'A' is not a valid name part"),
        ("a=debian12-amqp,vcpus=0", 3, "vcpus must be >= 1"),
        ("a=debian12-amqp,color=red", 2, "unknown option 'color=red'"),
        ("justtext", 2, "must look like ROLE=IMAGE"),
        ("a=no-such-recipe", 3, "no image recipe named 'no-such-recipe'"),
    ],
)
def test_vm_up_bad_input(
    spec: str, code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vm", "up", spec, "--accel", "tcg"]) == code
    err = capsys.readouterr().err
    assert fragment in err
    assert "Traceback" not in err
    assert not (paths.cache_dir() / "images").exists() or not any(
        (paths.cache_dir() / "images").iterdir()
    ), "bad input must be refused before any image build"
    assert registry.all_records() == []


def test_duplicate_roles(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["vm", "up", "a=x,pins=0", "a=y,pins=0", "--accel", "tcg"]) in (2, 3)
    assert "Traceback" not in capsys.readouterr().err


def test_ssh_and_down_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "ssh", "nosuch"]) == 2
    assert "no kvmple guest named 'nosuch'" in capsys.readouterr().err
    assert main(["vm", "down"]) == 2
    assert "pass --all" in capsys.readouterr().err


def test_list_and_gc_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "list"]) == 0
    assert "no guests" in capsys.readouterr().err
    crashed = make_record("kvmple-t-crashed", pid=dead_pid())
    registry.claim(crashed)
    Path(crashed.run_dir).mkdir()
    assert main(["vm", "list"]) == 0
    assert "owner dead" in capsys.readouterr().err
    assert main(["gc"]) == 0
    err = capsys.readouterr().err
    assert "forgot record kvmple-t-crashed" in err
    assert f"removed overlay dir {crashed.run_dir}" in err
    assert registry.all_records() == []
    assert main(["gc"]) == 0
    assert "nothing to clean" in capsys.readouterr().err


def test_vm_down_stops_detached_guests_but_not_live_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvmple.vm.libvirt_backend import connect
    from tests.unit.test_vm_libvirt import _xml

    live = make_record("kvmple-t-live")
    detached = registry.GuestRecord(
        **{**make_record("kvmple-t-det").to_json(), "detached": True, "owner_pid": 0}
    )
    with connect("test:///default") as lv:
        for record in (live, detached):
            registry.claim(record)
            Path(record.run_dir).mkdir()
            lv.create(_xml().replace("kvmple-c1-a", record.domain), record.domain)
        assert main(["vm", "down", "--all"]) == 0
        err = capsys.readouterr().err
        assert "removed domain kvmple-t-det" in err
        assert "kvmple-t-live: owned by running process" in err
        assert lv.names("kvmple-t-") == ["kvmple-t-live"]
        assert [r.domain for r in registry.all_records()] == ["kvmple-t-live"]
        assert main(["vm", "down", "det"]) == 2  # gone now: unknown name
        lv.destroy("kvmple-t-live")
    registry.forget(live)


def test_ssh_command_separator_is_only_the_leading_double_dash() -> None:
    from kvmple.vm.guestssh import command_argv

    assert command_argv(None) == [] and command_argv(["--"]) == []
    assert command_argv(["--", "grep", "--", "-x", "f"]) == ["grep", "--", "-x", "f"]
    assert command_argv(["nproc"]) == ["nproc"]

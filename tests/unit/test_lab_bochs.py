"""The Bochs VT-x lab host's pure parts: bochsrc, the result line, the verdict, records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kvmple.errors import GuestError, UsageError
from kvmple.lab import bochs_run
from kvmple.lab.bochs_verify import VerifyReport, _yield_stats, judge, parse_result
from kvmple.lab.protocol import RESULT_MARK
from kvmple.lab.result import LabResult, LabSetting


def _setting(name: str, gap: int, pause: int, updates: int) -> dict[str, Any]:
    return {
        "setting": name,
        "ple": {"ple_gap": gap, "ple_window": 4096},
        "counts": {"pause_exits": pause, "ple_window_updates": updates},
    }


def _doc(**changes: Any) -> dict[str, Any]:
    initial = {"ple_gap": 128, "ple_window": 4096}
    doc: dict[str, Any] = {
        "vmx_ple_flag": True,
        "steps": [{"command": "kvmple ple off", "exit_code": 0}],
        "settings": [
            _setting("on (module defaults)", 128, 24, 29),
            _setting("off", 0, 0, 0),
            _setting("on", 128, 20, 25),
        ],
        "initial": initial,
        "final": dict(initial),
    }
    doc.update(changes)
    return doc


def _judge(doc: dict[str, Any]) -> list[str]:
    return judge(LabResult.model_validate(doc))


def test_judge_accepts_the_expected_behaviour() -> None:
    assert _judge(_doc()) == []


def test_judge_names_every_contradiction() -> None:
    doc = _doc(
        vmx_ple_flag=False,
        settings=[
            _setting("on (module defaults)", 128, 0, 0),
            _setting("off", 128, 3, 0),
            {"setting": "on", "error": "HostError: boom"},
        ],
        final={"ple_gap": 0},
    )
    doc["steps"].append({"command": "kvmple ple on", "exit_code": 4})
    problems = "\n".join(_judge(doc))
    for expected in (
        "vmx flags lack 'ple'",
        "'kvmple ple on' exited 4",
        "on (module defaults): 0 PAUSE exits counted, expected > 0",
        "off: ple_gap read back 128, expected 0",
        "off: 3 PAUSE exits counted, expected exactly 0",
        "on: HostError: boom",
        "after restore",
    ):
        assert expected in problems


def test_judge_reports_an_in_lab_failure() -> None:
    assert _judge({"error": "ImportError: x"}) == ["the in-lab verification failed: ImportError: x"]


def test_parse_result_finds_the_line_among_kernel_messages() -> None:
    console = f"[  1.0] kvm: x\n{RESULT_MARK} {json.dumps(_doc())}\nKVMPLE-LAB-STAGE done\n"
    doc = parse_result(console)
    assert doc is not None and doc.settings[1].setting == "off"
    # the lab host's document comes back with exactly its keys (the --json report shows it)
    assert doc.model_dump(mode="json", exclude_unset=True, by_alias=True) == _doc()
    assert parse_result("no result yet\n") is None
    with pytest.raises(GuestError, match="not JSON"):
        parse_result(f"{RESULT_MARK} {{broken\n")
    bad = _doc(settings=[{"setting": "off", "ple": {"ple_gap": "many"}}])
    with pytest.raises(GuestError, match=r"result line: settings\.0\.ple\.ple_gap: "):
        parse_result(f"{RESULT_MARK} {json.dumps(bad)}\n")


def test_verify_report_keeps_the_stored_json_form() -> None:
    """lab verify-ple --json prints the keys it printed when the report was a dict."""
    yielded = {
        "setting": "on, 2 vCPUs (one holding)",
        "spin": {"seconds": 1.0, "kvm_stats": {"directed_yield_attempted": 0, "x": 5}},
        "counts": {"pause_exits": 7, "ple_window_updates": 2, "method": "hist"},
    }
    doc = LabResult.model_validate(_doc(**{"yield": yielded, "kernel": "6.1.0"}))
    report = VerifyReport(
        name="vt",
        verified=True,
        problems=[],
        emulated="emulated",
        cpus=1,
        stages_s={"verdict": 3.0},
        kernel=doc.kernel,
        initial=doc.initial,
        final=doc.final,
        steps=doc.steps,
        settings=doc.settings,
        directed_yield=_yield_stats(doc.yield_),
        console_log="/c.log",
    )
    stored = report.to_json()
    assert list(stored) == [
        "name", "verified", "problems", "emulated", "cpus", "stages_s", "kernel", "initial",
        "final", "steps", "settings", "directed_yield", "console_log",
    ]  # fmt: skip
    assert stored["steps"] == _doc()["steps"] and stored["settings"] == _doc()["settings"]
    assert stored["directed_yield"] == {
        "setting": "on, 2 vCPUs (one holding)",
        "error": None,
        "directed_yield_attempted": 0,
        "directed_yield_successful": None,
        "note": report.directed_yield.note if report.directed_yield else None,
        "preemption_reported": None,
        "counts": yielded["counts"],
        "kvm_stats": {"directed_yield_attempted": 0, "x": 5},
    }
    assert _yield_stats(LabSetting()) is None and _yield_stats(None) is None


def test_bochsrc_uses_a_ple_model_and_no_debugger_prompt(tmp_path: Path) -> None:
    text = bochs_run.bochsrc(tmp_path / "a.iso", tmp_path / "s.txt", tmp_path / "b.log", cpus=2)
    assert "model=corei7_haswell_4770, count=2" in text
    assert 'display_library: rfb, options="timeout=0"' in text
    assert f'dev="{tmp_path / "s.txt"}"' in text and "error: action=ignore" in text


def test_records_and_orphan_reaping(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead_owner = 2**22 + 12345  # above pid_max on default systems: never alive
    orphan = bochs_run.BochsHost("orphan", dead_owner, dead_owner, str(run_dir), "x", 1, 0.0)
    detached = bochs_run.BochsHost("kept", dead_owner, 0, str(tmp_path / "r2"), "x", 1, 0.0)
    mine = bochs_run.BochsHost("mine", dead_owner, os.getpid(), str(tmp_path / "r3"), "x", 1, 0.0)
    for host in (orphan, detached, mine):
        bochs_run.save(host)
    assert bochs_run.reap_orphans() == ["orphan"]
    assert not run_dir.exists()
    assert {h.name for h in bochs_run.all_hosts()} == {"kept", "mine"}
    assert bochs_run.load("kept").owner_pid == 0
    assert bochs_run.reap_orphans(include_detached=True) == ["kept"]
    with pytest.raises(UsageError, match="known: mine"):
        bochs_run.load("nope")


def test_kvm_ioctl_numbers_match_the_uapi_header() -> None:
    # include/uapi/linux/kvm.h, as the kernel's _IO/_IOW/_IOR macros encode them
    from kvmple.host import kvmrun

    assert kvmrun.KVM_CREATE_VM == 0xAE01
    assert kvmrun.KVM_CREATE_VCPU == 0xAE41
    assert kvmrun.KVM_RUN == 0xAE80
    assert kvmrun.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert kvmrun.KVM_GET_SREGS == 0x8138AE83
    assert kvmrun.KVM_SET_REGS == 0x4090AE82


def test_bochsrc_has_no_sound_card() -> None:
    # Debian's bochs-bin aborts in its ALSA mixer thread on a host without a sound card
    text = bochs_run.bochsrc(Path("a.iso"), Path("s"), Path("l"))
    assert "sound: driver=dummy" in text and "speaker: enabled=0" in text


def test_in_lab_program_imports_no_pydantic() -> None:
    """The Bochs initramfs ships what the in-lab program imports and not pydantic (a compiled
    extension): the modules it runs (bochs_media.INNER_MODULES) must not import it."""
    import subprocess
    import sys

    from kvmple.lab.bochs_media import INNER_MODULES

    code = (
        "import importlib, sys\n"
        f"for name in {[m for m in INNER_MODULES if m.startswith('kvmple')]!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('pydantic')))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert found.stdout.strip() == "[]"

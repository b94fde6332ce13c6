"""The Bochs VT-x lab host (emulated VT-x with PLE), end to end: the reduced PLE verification.

``kvmple lab up intel`` boots a kernel kvmple built for it under Bochs; inside, kvmple's own
``ple status|off|on|restore`` run against a real kvm_intel with PLE, and its evidence
collector (hist triggers) counts PAUSE exits and PLE window updates of a PAUSE-loop KVM
guest: > 0 with PLE on, exactly 0 with PLE off. ``kvmple lab verify-ple`` judges it.
Everything is emulated: no figure here is a hardware figure. Bochs is slow (minutes).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.lab import bochs_run
from tests.support import need, need_program, need_root

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")


def test_verify_ple_on_emulated_vtx(shared_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for program in ("bochs-bin", "grub-mkrescue", "xorriso", "unshare", "ldd"):
        need_program(program)
    need_root()
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    name = f"t{os.getpid()}"
    began = time.monotonic()
    assert main(["lab", "up", "intel", "--name", name, "--json"]) == 0
    up = json.loads(capsys.readouterr().out)
    assert set(up["stages_s"]) == {"Linux version", "userspace", "kvm_intel-loaded"}
    pid = up["pid"]
    try:
        code = main(["lab", "verify-ple", name, "--json"])
        report = json.loads(capsys.readouterr().out)
    finally:
        if any(h.name == name for h in bochs_run.all_hosts()):
            main(["lab", "down", name])
    print(
        f"lab intel: up {up['stages_s']}, verdict {report['stages_s'].get('verdict')} s, "
        f"wall {time.monotonic() - began:.0f} s (emulated, not hardware figures)"
    )
    assert code == 0, report["problems"]
    assert report["verified"] and "not hardware figures" in report["emulated"]
    settings = {s["setting"]: s for s in report["settings"]}
    off, on = settings["off"], settings["on"]
    assert off["ple"]["ple_gap"] == 0
    assert off["counts"]["pause_exits"] == 0 and off["counts"]["ple_window_updates"] == 0
    assert on["ple"]["ple_gap"] > 0
    assert on["counts"]["pause_exits"] > 0 and on["counts"]["ple_window_updates"] > 0
    # the counts belong to the PAUSE-loop guest's vCPU thread, read from the kernel's hist
    assert on["counts"]["pause_exits_by_thread"] == {
        str(on["spin"]["vcpu_tid"]): on["counts"]["pause_exits"]
    }
    commands = {s["command"]: s["exit_code"] for s in report["steps"]}
    assert commands == {
        "kvmple ple status --json": 0,
        "kvmple ple off": 0,
        "kvmple ple on": 0,
        "kvmple ple restore": 0,
    }
    assert report["final"] == report["initial"]
    # nothing left behind: no record, no Bochs
    assert all(h.name != name for h in bochs_run.all_hosts())
    assert (
        not Path(f"/proc/{pid}").exists()
        or b"bochs" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )

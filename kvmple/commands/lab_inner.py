"""The PLE verification as it runs INSIDE the Bochs VT-x lab host (``python3 -m
kvmple.commands.lab_inner``, started by the lab host's /init once kvm_intel is loaded).

It drives kvmple's own code on a real kvm_intel with PLE: the ``kvmple ple status|off|on|
restore`` commands (the same argparse handlers a user runs), the PLE values read back from
sysfs after each, and for each setting a PAUSE-loop guest (kvmple.host.kvmrun) while
kvmple's evidence collector (kvmple.campaign.evidence.ExitCounter, hist triggers) counts
PAUSE exits and PLE window updates. Every result goes to the serial console as one line
``KVMPLE-LAB-RESULT <json>``; the outer host parses it (kvmple.lab.bochs_verify). Figures
from Bochs are emulated, not hardware figures.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from kvmple.lab.protocol import RESULT_MARK, STEP_MARK

if TYPE_CHECKING:
    from kvmple.campaign.evidence import ExitCounter

SPIN_SECONDS = 1.0  # of guest time: Bochs's clock advances with its instruction count


def _mark(step: str) -> None:
    print(f"{STEP_MARK} {step} t={time.monotonic():.1f}", flush=True)


def run_cli(argv: list[str]) -> dict[str, object]:
    """One ``kvmple ...`` command in this process: its exit code and its output."""
    from kvmple import ui
    from kvmple.cli import main  # the user-facing command, registered alone (see build_parser)

    buffer = io.StringIO()
    saved = ui.out.file, ui.err.file
    ui.out.file = ui.err.file = buffer
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            code = main(argv, commands=("ple",))
    finally:
        ui.out.file, ui.err.file = saved
    return {"command": "kvmple " + " ".join(argv), "exit_code": code, "output": buffer.getvalue()}


def read_back() -> dict[str, int]:
    from kvmple.host import ple
    from kvmple.host.seam import real_seam

    return dict(ple.read_knobs(real_seam()).values)


def count_pause(seconds: float = SPIN_SECONDS, holder: bool = False) -> dict[str, object]:
    """The PAUSE-loop guest for ``seconds`` under kvmple's exit counter (``holder``: with a
    second, busy vCPU that the spinner's PLE exits can yield to)."""
    from kvmple.campaign.evidence import ExitCounter
    from kvmple.host.kvmrun import spin_pause

    with ExitCounter(tracefs=Path("/sys/kernel/tracing"), module="kvm_intel") as counter:
        spin = spin_pause(seconds, holder=holder)
        counts = counter.counts()
        raw = {name: _hist_text(counter, name) for name in ("kvm_exit", "kvm_ple_window_update")}
    return {"spin": spin.to_json(), "counts": counts, "hist": raw}


def _hist_text(counter: ExitCounter, event: str) -> str:
    path = counter.instance / "events" / "kvm" / event / "hist"
    with contextlib.suppress(OSError):
        return str(path.read_text())
    return ""


def _setting(name: str, step: dict[str, object] | None, holder: bool = False) -> dict[str, object]:
    _mark(f"setting {name}")
    entry: dict[str, object] = {"setting": name, "command": step}
    try:
        entry["ple"] = read_back()
        entry.update(count_pause(holder=holder))
    except Exception as exc:  # reported to the outer host, which judges the whole run
        entry["error"] = _describe(exc)
    return entry


def verify() -> dict[str, object]:
    """The reduced verification: status; counts with PLE on; off; counts; on; counts; restore."""
    steps: list[dict[str, object]] = []  # filled in below, in the document's key order
    settings: list[dict[str, object]] = []
    doc: dict[str, object] = {
        "kernel": platform.release(),
        "emulated": "Bochs (VT-x with PLE); figures are not hardware figures",
        "vmx_ple_flag": _vmx_has_ple(),
        "steps": steps,
        "settings": settings,
    }
    _mark("status")
    steps.append(run_cli(["ple", "status", "--json"]))
    doc["initial"] = read_back()
    settings.append(_setting("on (module defaults)", None))
    for action in ("off", "on"):
        _mark(f"ple {action}")
        step = run_cli(["ple", action])
        steps.append(step)
        settings.append(_setting(action, step))
    # recorded, not judged: whether kvm_vcpu_on_spin -> yield_to finds the preempted holder
    doc["yield"] = _setting("on, 2 vCPUs (one holding)", None, holder=True)
    _mark("restore")
    steps.append(run_cli(["ple", "restore"]))
    doc["final"] = read_back()
    return doc


def _describe(exc: Exception) -> str:
    """The error with where it happened (the lab host's console is all there is to read)."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc} (at {where})"


def _vmx_has_ple() -> bool:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("vmx flags"):
            return "ple" in line.split(":", 1)[1].split()
    return False


def main() -> int:
    os.environ.setdefault("KVMPLE_STATE_DIR", "/var/lib/kvmple")
    try:
        doc = verify()
    except Exception as exc:  # the outer host must get an answer, never a hang
        doc = {"error": _describe(exc)}
    print(f"{RESULT_MARK} {json.dumps(doc, separators=(',', ':'))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark of the lab host kernel cycle (issue 13): an amd lab host, the kvmple-built lab
kernel (kvmple.lab.kernel.amd_kernel, cached by content; boot-tested first if its image has
no pass) installed with `kvmple lab install-kernel --campaign` and booted once by kexec, the
campaign resumed by itself on it, then the same kernel made to panic (init=MISSING_INIT)
falling back to the lab host's own kernel (exit 13).

Prints the stage times: lab up, install (staged, kexec -> SSH back on the new kernel),
resume (SSH back -> the resume unit done, and when the unit started after the boot by the
lab host's own clock), fallback. The fallback runs here, not in CI: it would add ~6 min to
the lab tier (measured on branch labkernel), over the 4 min CI can spare; only its console
reading is unit-tested (tests/unit/test_lab_kernel.py). The campaign is lab-smoke cut to one
run (PV sched yield off, no busy loop); the lab tier (tests/lab/test_lab_amd.py) resumes the
whole of it.
Emulated timings (QEMU TCG): never hardware figures.

    .venv/bin/python bench/lab.py kernel      (as root; uses the shared test image cache)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from labcli import kvmple, lab_session, lab_up, use_test_cache

NAME = "bench-kernel"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
MISSING_INIT = "/kvmple-missing-init"
CUT_PLAYBOOK = """
import yaml
doc = yaml.safe_load(open("playbooks/lab-smoke.yaml"))
doc["name"] = "bench-kernel"
for factor in doc["factors"]:
    if factor["knob"] == "pv.sched_yield":
        factor["values"] = ["off"]
doc["axes"]["spinners"]["values"] = [0]
yaml.safe_dump(doc, open("playbooks/bench-kernel.yaml", "w"))
"""


def ssh(*command: str, timeout: float = 900.0) -> str:
    _, done = kvmple("lab", "ssh", "--timeout", str(timeout), NAME, "--", *command,
                     timeout=timeout + 60)  # fmt: skip
    return done.stdout.strip()


def lab_kernel() -> Path:
    """The cached lab kernel's build directory, boot-tested (the install requires a pass)."""
    from kvmple.kernel.bootpass import load_pass
    from kvmple.lab.kernel import amd_kernel

    start = time.perf_counter()
    out, manifest = amd_kernel(TARBALL)
    print(f"lab kernel {manifest.release} (0 s when cached):         "
          f"{time.perf_counter() - start:7.1f} s")  # fmt: skip
    passed = load_pass(out)
    if passed is None or passed.image_sha256 != manifest.image_sha256:
        gate_s, _ = kvmple("kernel", "boot-test", "--build", str(out))
        print(f"boot-test gate:                                    {gate_s:7.1f} s")
    return out


def register() -> str:
    """The cut campaign registered by a transient unit, stopped before its run ends."""
    ssh("env", "-C", "/opt/kvmple", "/opt/kvmple/venv/bin/python3", "-c", CUT_PLAYBOOK)
    ssh("systemd-run", "--unit", "kvmple-bench-register", "--working-directory=/opt/kvmple",
        "/usr/local/bin/kvmple", "run", "playbooks/bench-kernel.yaml", "--allow-unavailable",
        "--no-report")  # fmt: skip
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        listing = subprocess.run(  # exit 11 ("no results store") until the store exists
            [sys.executable, "-m", "kvmple.cli", "lab", "ssh", NAME, "--", "kvmple", "results",
             "list", "--json"], capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        listed = json.loads(listing.stdout) if listing.returncode == 0 else []
        found = [c["id"] for c in listed if c["name"] == "bench-kernel"]
        if found:
            ssh("systemctl", "stop", "kvmple-bench-register")
            return str(found[0])
        time.sleep(10)
    sys.exit("the campaign was never registered")


def wait_resumed(timeout: float = 3000.0) -> tuple[str, float]:
    """(how the resume unit ended, when it started: seconds after the boot) from this boot's
    journal; `systemctl show` forgets both once the unit has disabled itself (systemd reloads
    and drops the inactive unit's state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ssh("journalctl", "-b", "-u", "kvmple-resume.service", "-o", "short-monotonic",
                   "--no-pager")  # fmt: skip
        lines = [ln for ln in text.splitlines() if "kvmple-resume.service" in ln]
        ended = [ln for ln in lines if "Finished kvmple-resume" in ln or "Failed to start" in ln]
        if ended:
            start = next((ln for ln in lines if "Starting kvmple-resume" in ln), "[0]")
            return ("success" if "Finished" in ended[0] else "failed"), float(
                start[1 : start.index("]")]
            )
        time.sleep(10)
    sys.exit("the campaign did not resume within the timeout")


def cycle(out: Path) -> None:
    campaign_s = time.perf_counter()
    campaign = register()
    print(f"campaign {campaign} registered and stopped:           "
          f"{time.perf_counter() - campaign_s:7.1f} s")  # fmt: skip
    install_s, done = kvmple("lab", "install-kernel", NAME, "--build", str(out),
                             "--campaign", campaign, "--json", timeout=2400)  # fmt: skip
    result, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())  # then a summary line
    print(f"install-kernel -> SSH on {result['running']}:   {install_s:7.1f} s")
    print(f"  of which staged (bzImage, modules, records):     {result['staged_s']:7.1f} s")
    print(f"  of which kexec -> back on SSH:                   {result['back_s']:7.1f} s")
    resume_s = time.perf_counter()
    ended, started = wait_resumed()
    print(f"resume: SSH back -> resumed campaign done:         "
          f"{time.perf_counter() - resume_s:7.1f} s  ({ended})")  # fmt: skip
    print(f"  resume unit started after the boot (its clock):  {started:7.1f} s")
    fallback_s = time.perf_counter()
    failed = subprocess.run(
        [sys.executable, "-m", "kvmple.cli", "lab", "install-kernel", NAME, "--build", str(out),
         "--append", f"init={MISSING_INIT}"],
        capture_output=True, text=True, timeout=2400, check=False,
    )  # fmt: skip
    print(f"fallback (panicking kernel -> own kernel, exit {failed.returncode}): "
          f"{time.perf_counter() - fallback_s:7.1f} s")  # fmt: skip
    if failed.returncode != 13:
        sys.exit(f"expected exit 13 (BootFallback), got {failed.returncode}: {failed.stderr}")
    print(f"  running again: {ssh('uname', '-r')}")


def main() -> None:
    use_test_cache()
    out = lab_kernel()
    with lab_session(NAME):
        lab_up(NAME, "lab up amd")
        cycle(out)


if __name__ == "__main__":
    main()

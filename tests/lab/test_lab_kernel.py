"""Lab tier, host kernel install (issue 13): a kernel kvmple builds for an amd lab host
(tinyconfig + kvm_guest.config + kvmple-boot + kvmple-image + kvmple-lab-amd; built once and
cached by content under /var/cache/kvmple-tests/lab), passed by the boot-test gate, installed
with `kvmple lab install-kernel` (the lab host's own `kvmple kernel install --method kexec
--reboot --execute`) and booted once: `uname -r` shows it, kvm_amd loads from its modules,
and a campaign registered before the install resumes by itself on the new kernel. Then the
same kernel made to panic (init=/kvmple-missing-init) falls back to the lab host's own
kernel: exit 13, the console's panic line, nothing left behind.

One lab host serves the module. Timings are emulated (QEMU TCG), never hardware figures.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.kernel.bootpass import load_pass
from kvmple.kernel.manifest import BuildManifest
from tests.lab.test_lab_amd import CACHE, UP_TIMEOUT, _env, _prerequisites, kvmple, lab_domains
from tests.support import need, need_program

# the first test carries the kernel build when the cache is cold (~40-50 min on 2 loaded cores)
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(7200)]

NAME = "t-kernel"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
PLAYBOOK = "playbooks/lab-kernel.yaml"  # on the lab host, under /opt/kvmple
MISSING_INIT = "/kvmple-missing-init"
# lab-smoke cut to one run (PV sched yield off, no busy loop; PLE collapses to unavailable)
CUT_PLAYBOOK = """
import yaml
doc = yaml.safe_load(open("playbooks/lab-smoke.yaml"))
doc["name"] = "lab-kernel"
for factor in doc["factors"]:
    if factor["knob"] == "pv.sched_yield":
        factor["values"] = ["off"]
doc["axes"]["spinners"]["values"] = [0]
yaml.safe_dump(doc, open("playbooks/lab-kernel.yaml", "w"))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, BuildManifest]]:
    """The lab host kernel (built on first use: minutes to an hour on 2 loaded cores) with a
    boot-test gate pass."""
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    for program in ("make", "gcc", "flex", "bison", "bc"):
        need_program(program)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KVMPLE_CACHE_DIR", str(CACHE))
        from kvmple.lab.kernel import amd_kernel

        start = time.monotonic()
        out, manifest = amd_kernel(TARBALL)
        print(f"lab kernel {manifest.release}: build {manifest.seconds} s (recorded), "
              f"{time.monotonic() - start:.0f} s here (0 when cached)")  # fmt: skip
    passed = load_pass(out)
    if passed is None or passed.image_sha256 != manifest.image_sha256:
        env = _env(tmp_path_factory.mktemp("gate"))
        gate = kvmple(env, "kernel", "boot-test", "--build", str(out), timeout=1800)
        assert gate.returncode == 0, gate.stderr[-3000:]
    yield out, manifest


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    _prerequisites()
    env = _env(tmp_path_factory.mktemp("lab-kernel"))
    start = time.monotonic()
    up = kvmple(env, "lab", "up", "amd", "--name", NAME, timeout=UP_TIMEOUT)
    print(f"lab up: {time.monotonic() - start:.0f} s")
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield env
    finally:
        down = kvmple(env, "lab", "down", NAME, timeout=300)
        assert down.returncode == 0, down.stderr
        assert f"kvmple-lab-{NAME}" not in lab_domains()


def ssh(env: dict[str, str], *command: str, timeout: float = 900.0) -> str:
    done = kvmple(env, "lab", "ssh", "--timeout", str(timeout), NAME, "--", *command,
                  timeout=timeout + 60)  # fmt: skip
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout.strip()


def _register_campaign(env: dict[str, str]) -> str:
    """A one-run campaign, registered, then stopped (SIGTERM) before its first run ends."""
    ssh(env, "env", "-C", "/opt/kvmple", "/opt/kvmple/venv/bin/python3", "-c", CUT_PLAYBOOK)
    ssh(env, "systemd-run", "--unit", "kvmple-test-register", "--working-directory=/opt/kvmple",
        "/usr/local/bin/kvmple", "run", PLAYBOOK, "--allow-unavailable", "--no-report")  # fmt: skip
    deadline = time.monotonic() + 900
    while True:
        listed = json.loads(ssh(env, "kvmple", "results", "list", "--json"))
        found = [c["id"] for c in listed if c["name"] == "lab-kernel"]
        if found:
            break
        assert time.monotonic() < deadline, "the campaign was never registered"
        time.sleep(10)
    ssh(env, "systemctl", "stop", "kvmple-test-register")  # SIGTERM: kvmple cleans up
    (campaign,) = found
    return str(campaign)


def _wait_resumed(env: dict[str, str], timeout: float = 1800.0) -> dict[str, str]:
    """The resume unit's final state once it has run (it is a oneshot)."""
    deadline = time.monotonic() + timeout
    props = "ActiveState,Result,ExecMainStatus,ExecMainExitTimestampMonotonic"
    while True:
        text = ssh(env, "systemctl", "show", "-p", props, "kvmple-resume.service")
        state = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if state.get("ExecMainExitTimestampMonotonic", "0") != "0" and state.get("ActiveState") in (
            "inactive",
            "failed",
        ):
            return state
        assert time.monotonic() < deadline, f"the campaign did not resume: {state}"
        time.sleep(10)


def test_install_boot_once_and_resume(
    lab: dict[str, str], built: tuple[Path, BuildManifest]
) -> None:
    out, manifest = built
    assert (
        ssh(lab, "cat", "/etc/default/kexec").count("LOAD_KEXEC=false") == 1
    )  # no reboot is a kexec
    before = ssh(lab, "uname", "-r")
    campaign = _register_campaign(lab)
    start = time.monotonic()
    done = kvmple(lab, "lab", "install-kernel", NAME, "--build", str(out), "--campaign", campaign,
                  "--json", timeout=2400)  # fmt: skip
    print(f"install-kernel: {time.monotonic() - start:.0f} s; {done.stdout.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[0])
    assert result["running"] == manifest.release != before
    assert ssh(lab, "uname", "-r") == manifest.release
    # its own modules: kvm_amd loaded at boot from /lib/modules/RELEASE; kvm tracepoints
    assert ssh(lab, "cat", "/sys/module/kvm_amd/parameters/npt") in ("1", "Y")
    assert ssh(lab, "test", "-e", "/sys/kernel/tracing/events/kvm/kvm_exit/hist") == ""
    resumed_at = time.monotonic()
    state = _wait_resumed(lab)
    print(f"campaign {campaign} resumed and finished {time.monotonic() - resumed_at:.0f} s "
          "after SSH answered")  # fmt: skip
    assert (state["Result"], state["ExecMainStatus"]) == ("success", "0"), state
    enabled = kvmple(lab, "lab", "ssh", NAME, "--", "systemctl", "is-enabled", "kvmple-resume")
    assert enabled.stdout.strip() == "disabled", enabled.stdout + enabled.stderr  # one shot
    export = json.loads(ssh(lab, "kvmple", "results", "export", "--format", "json"))
    (exported,) = [c for c in export["campaigns"] if c["meta"]["id"] == campaign]
    assert exported["meta"]["status"] == "complete"
    assert exported["meta"]["host"]["kernel_release"] == manifest.release  # re-recorded
    (run_,) = exported["runs"]
    assert run_["status"] == "ok" and run_["provenance"]["host"]["kvm_module"] == "kvm_amd"
    assert run_["kvm"]["exits"]["exits"] > 0  # kvm:kvm_exit hist triggers on the new kernel


def test_a_kernel_that_panics_falls_back(
    lab: dict[str, str], built: tuple[Path, BuildManifest]
) -> None:
    out, manifest = built
    start = time.monotonic()
    failed = kvmple(lab, "lab", "install-kernel", NAME, "--build", str(out),
                    "--append", f"init={MISSING_INIT}", timeout=2400)  # fmt: skip
    print(f"fallback: {time.monotonic() - start:.0f} s; {failed.stderr.strip()[-1500:]}")
    assert failed.returncode == 13, failed.stdout + failed.stderr
    assert f"kernel {manifest.release} did not boot; it fell back to" in failed.stderr
    assert f"Requested init {MISSING_INIT} failed" in failed.stderr
    assert "Traceback" not in failed.stderr
    running = ssh(lab, "uname", "-r")
    assert running != manifest.release  # the lab host's own kernel again
    # nothing left behind: no resume unit, no staged build; the lab host is usable
    ssh(lab, "test", "!", "-e", "/etc/systemd/system/kvmple-resume.service")
    ssh(lab, "test", "!", "-e", f"/var/lib/kvmple/kernels/{manifest.release}")
    listing = json.loads(kvmple(lab, "lab", "list", "--json").stdout)
    assert [r["state"] for r in listing if r["name"] == NAME] == ["running"]
    assert os.path.exists(out / "kvmple-build.json")

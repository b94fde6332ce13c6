"""Lab tier, AMD part: an emulated AMD-V host (QEMU TCG, qemu64,+svm,+npt) booted with
`kvmple lab up amd`, and kvmple's own commands run inside it against a real kvm_amd.

One lab host serves the module, restored from its booted snapshot (a cold boot takes
minutes under TCG; the first run of a snapshot key boots, saves and restores): up -> doctor ->
module reload (and its refusal while a VM runs) -> the lab-smoke campaign registered and
stopped in its first run -> the kvmple-built lab kernel (tinyconfig + kvm_guest.config +
kvmple-boot + kvmple-image + kvmple-lab-amd; built once and cached by content under
/var/cache/kvmple-tests/lab, passed by the boot-test gate) installed with `kvmple lab
install-kernel --campaign` and booted once by kexec -> the campaign resumed by itself on
it, complete, checked like any lab-smoke run -> down. The failure tests (a CPU model QEMU
rejects, a lab host that never answers in time) boot their own and must leave nothing.
The panic fallback of install-kernel (exit 13, 151 s more here) is measured by bench/lab.py.

Timings are emulated (QEMU TCG), never hardware figures; they are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmple.kernel.bootpass import load_pass
from kvmple.kernel.manifest import BuildManifest
from kvmple.run import run
from tests.support import need, need_program, need_root

# the kernel fixture carries the lab kernel build when the cache is cold (~50 min here)
pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(7200)]

URI = "qemu:///system"
CACHE = Path("/var/cache/kvmple-tests")
NAME = "t-amd"
UP_TIMEOUT = 1800.0  # an image build (first run: ~15 min) + the boot (2-5 min under load)
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")  # the lab kernel's source
REGISTER_UNIT = "kvmple-test-register"
RESUME_UNIT = "kvmple-resume.service"  # kvmple.kernel.install's one-shot unit
STAGES: dict[str, float] = {}  # stage -> seconds, printed when the lab host goes down


def _prerequisites() -> None:
    need_root()
    need_program("qemu-system-x86_64")
    need_program("virsh")
    need_program("debootstrap")
    need(
        run(["virsh", "-c", URI, "uri"], timeout=30, check=False).ok,
        "libvirtd does not answer on qemu:///system (scripts/setup-host.sh starts it)",
    )


def kvmple(
    env: dict[str, str], *args: str, timeout: float = 900.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmple.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KVMPLE_CACHE_DIR=str(CACHE),
        KVMPLE_KEY_DIR=str(CACHE / "ssh"),  # the key baked into the shared cache's images
        KVMPLE_STATE_DIR=str(base / "state"),
        KVMPLE_DATA_DIR=str(base / "data"),
        KVMPLE_NO_PROGRESS="1",
    )
    return env


def lab_domains() -> set[str]:
    listing = run(["virsh", "-c", URI, "list", "--all", "--name"], timeout=30)
    return {n.strip() for n in listing.stdout.splitlines() if n.strip().startswith("kvmple-lab-")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running amd lab host named NAME; the env that reaches it. A failing test of the
    module gets the lab host's console tail and journal in its report (tests/lab/conftest.py
    calls lab_host_state)."""
    _prerequisites()
    env = _env(tmp_path_factory.mktemp("lab-amd"))
    module_start = start = time.monotonic()
    up = kvmple(env, "lab", "up", "amd", "--name", NAME, timeout=UP_TIMEOUT)
    STAGES["lab up (to SSH + kvm_amd)"] = time.monotonic() - start
    print(f"lab up: {STAGES['lab up (to SSH + kvm_amd)']:.0f} s; {up.stdout.strip()}")
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield env
    finally:
        start = time.monotonic()
        down = kvmple(env, "lab", "down", NAME, timeout=300)
        STAGES["lab down"] = time.monotonic() - start
        STAGES["lab host module total (up -> down)"] = time.monotonic() - module_start
        print(f"stage times (emulated, load {os.getloadavg()[0]:.1f}):")
        for stage, seconds in STAGES.items():
            print(f"  {stage:<52} {seconds:7.0f} s")
        assert down.returncode == 0, down.stderr
        assert f"kvmple-lab-{NAME}" not in lab_domains()


def lab_host_state(env: dict[str, str]) -> str:
    """The lab host's console tail (its boots, kernel messages) and its journal (kvmple's
    units, sshd, OOM kills, signals): what a failing test's report needs."""
    parts = []
    for console in sorted(Path(env["KVMPLE_STATE_DIR"]).rglob("console.log")):
        text = console.read_bytes()[-8000:].decode(errors="replace")
        parts.append(f"---- {console} (last 8000 bytes)\n{text}")
    journal = kvmple(env, "lab", "ssh", "--timeout", "120", NAME, "--",
                     "journalctl", "--no-pager", "-o", "short-monotonic", "-n", "300",
                     timeout=200)  # fmt: skip
    parts.append(f"---- lab host journal (lab ssh exit {journal.returncode})\n"
                 f"{journal.stdout[-30000:]}{journal.stderr[-2000:]}")  # fmt: skip
    return "\n".join(parts)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, BuildManifest]]:
    """The amd lab host's kernel (kvmple.lab.kernel.amd_kernel: built on first use, ~50 min
    on 2 loaded cores, then cached by content) with a boot-test gate pass of its image."""
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    for program in ("make", "gcc", "flex", "bison", "bc"):
        need_program(program)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KVMPLE_CACHE_DIR", str(CACHE))
        from kvmple.lab.kernel import amd_kernel

        start = time.monotonic()
        out, manifest = amd_kernel(TARBALL)
        STAGES["lab kernel (0 when cached)"] = time.monotonic() - start
        print(f"lab kernel {manifest.release} in {out}: build {manifest.seconds} s (recorded)")
    passed = load_pass(out)
    if passed is None or passed.image_sha256 != manifest.image_sha256:
        env = _env(tmp_path_factory.mktemp("gate"))
        start = time.monotonic()
        gate = kvmple(env, "kernel", "boot-test", "--build", str(out), timeout=1800)
        STAGES["boot-test gate"] = time.monotonic() - start
        assert gate.returncode == 0, gate.stderr[-3000:]
    yield out, manifest


def ssh(
    env: dict[str, str], *command: str, timeout: float = 900.0
) -> subprocess.CompletedProcess[str]:
    return kvmple(env, "lab", "ssh", NAME, "--", *command, timeout=timeout)


def test_lab_host_is_up_with_kvm_amd(lab: dict[str, str]) -> None:
    listing = kvmple(lab, "lab", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    (row,) = [r for r in json.loads(listing.stdout) if r["name"] == NAME]
    assert (row["kind"], row["state"], row["cpus"]) == ("amd", "running", 2)
    assert "svm" in row["cpu"] and row["ssh_port"] > 0
    # started from its booted snapshot (the first boot of the key saves it, then restores
    # it): the rest of the module runs on a restored lab host, as users get by default
    assert (row["boot"], len(row["snapshot"] or "")) == ("restored", 64), row
    cpu = ssh(lab, "grep", "-m1", "-o", "-w", "svm", "/proc/cpuinfo")
    assert cpu.stdout.strip() == "svm", cpu.stderr
    params = ssh(lab, "cat", "/sys/module/kvm_amd/parameters/npt")
    assert params.stdout.strip() in ("1", "Y"), params.stderr  # nested paging is on


def test_doctor_inside_says_kvm_without_ple(lab: dict[str, str]) -> None:
    start = time.monotonic()
    doctor = ssh(lab, "kvmple", "doctor", "--json", timeout=900)
    STAGES["doctor inside"] = time.monotonic() - start
    print(f"doctor inside the lab host: {STAGES['doctor inside']:.0f} s")
    doc = json.loads(doctor.stdout)
    assert doc["verdict"] == "kvm", doc["reason"]
    assert doc["kvm"]["boot_probe"]["kvm"]["passed"] is True
    assert doc["kvm"]["module"]["name"] == "kvm_amd"
    assert "no PLE: the (emulated) CPU has no pause filter" in doc["reason"]
    assert doc["ple"]["available"] is False
    assert doc["host"]["machine"]["emulated"] is True
    assert "kvm" in doc["libvirt"]["domain_types"]


def test_module_reload_reads_back_and_is_refused_while_a_vm_runs(lab: dict[str, str]) -> None:
    start = time.monotonic()
    off = ssh(lab, "kvmple", "lab", "reload-module", "nested=0", "--json")
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["after"] == {"nested": "0"}
    assert ssh(lab, "cat", "/sys/module/kvm_amd/parameters/nested").stdout.strip() == "0"
    # a KVM VM (QEMU holding /dev/kvm, paused before its first instruction) blocks a reload
    vm = ssh(
        lab,
        "qemu-system-x86_64", "-accel", "kvm", "-S", "-m", "64", "-display", "none",
        "-daemonize", "-pidfile", "/run/kvmple-test-vm.pid",
    )  # fmt: skip
    assert vm.returncode == 0, vm.stderr
    try:
        refused = ssh(lab, "kvmple", "lab", "reload-module", "nested=1")
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert "running, nothing changed" in refused.stderr
        assert ssh(lab, "cat", "/sys/module/kvm_amd/parameters/nested").stdout.strip() == "0"
    finally:
        ssh(lab, "pkill", "-F", "/run/kvmple-test-vm.pid")
    for _ in range(30):  # QEMU exits asynchronously after SIGTERM
        back = ssh(lab, "kvmple", "lab", "reload-module", "nested=1", "--json")
        if back.returncode == 0:
            break
        time.sleep(2)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["after"] == {"nested": "1"}
    STAGES["module reload + refusal + reload"] = time.monotonic() - start


def ssh_ok(env: dict[str, str], *command: str, timeout: float = 900.0) -> str:
    """``command``'s stdout in the lab host; fails the test (with its output) otherwise.
    A connection that fails before the command starts is tried again by kvmple.remote
    itself (seen here right after the kexec: "No existing session", "Timeout opening
    channel"), not by this test."""
    done = kvmple(env, "lab", "ssh", "--timeout", str(timeout), NAME, "--", *command,
                  timeout=timeout + 60)  # fmt: skip
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout.strip()


def _register_campaign(env: dict[str, str]) -> str:
    """lab-smoke registered by a transient unit, stopped (SIGTERM: kvmple cleans up) before
    its first run ends, so the kernel install's resume unit has a campaign to continue.
    (kvmple run under `lab ssh` + `timeout` ignored SIGINT for minutes: labkernel's finding.)"""
    ssh_ok(env, "systemd-run", "--unit", REGISTER_UNIT, "--working-directory=/opt/kvmple",
           "/usr/local/bin/kvmple", "run", "playbooks/lab-smoke.yaml", "--allow-unavailable",
           "--no-report")  # fmt: skip
    deadline = time.monotonic() + 900
    while True:
        # exit 11 ("no results store") until the campaign has created the store
        listing = kvmple(env, "lab", "ssh", NAME, "--", "kvmple", "results", "list", "--json")
        listed = json.loads(listing.stdout) if listing.returncode == 0 else []
        found = [str(c["id"]) for c in listed if c["name"] == "lab-smoke"]
        if found:
            break
        assert time.monotonic() < deadline, f"lab-smoke never registered: {listing.stderr}"
        time.sleep(10)
    ssh_ok(env, "systemctl", "stop", REGISTER_UNIT)
    (campaign,) = found
    listed = json.loads(ssh_ok(env, "kvmple", "results", "list", "--json"))
    (row,) = [c for c in listed if str(c["id"]) == campaign]
    print(f"registered campaign {campaign} stopped before its first run ended: {row}")
    return campaign


def _wait_resumed(env: dict[str, str], timeout: float = 3000.0) -> list[str]:
    """systemd's lines about the resume unit in this boot's journal, once it has ended
    ("Finished ..." or "Failed to start ..."). Not `systemctl show`: the unit disables itself,
    systemd reloads and forgets the inactive unit's timestamps and exit status (seen
    2026-11-30: every timestamp 0 after a successful resume). The wait runs in the lab host,
    over one SSH connection: polled from here, one of ~40 handshakes into a lab host whose
    vCPU 0 runs the nested guests met an RCU stall in CI."""
    journal = ("journalctl", "-b", "-u", RESUME_UNIT, "-o", "cat", "--no-pager")
    ended = shlex.quote(f"^(Finished|Failed to start) {RESUME_UNIT}")
    wait = (
        f"while lines=$({shlex.join(journal)}); do printf '%s\\n' \"$lines\" "
        f"| grep -Eq {ended} && exit 0; sleep 15; done; exit 3"
    )  # 3: journalctl failed
    waited = kvmple(env, "lab", "ssh", "--timeout", str(timeout), NAME, "--", "sh", "-c", wait,
                    timeout=timeout + 60)  # fmt: skip
    about = [ln for ln in ssh_ok(env, *journal).splitlines() if RESUME_UNIT in ln]
    assert waited.returncode == 0, f"the campaign did not resume and end: {waited.stderr} {about}"
    return about


def test_kvm_campaign_resumes_on_an_installed_kernel(
    lab: dict[str, str], built: tuple[Path, BuildManifest]
) -> None:
    """lab-smoke inside the lab host (two nested libvirt type='kvm' guests pinned to its CPU
    0, hackbench vs 0/1 busy loops x PV sched yield off/on, cpu-pm off and kvm.halt_poll_ns
    set and read back, PLE recorded unavailable), registered and stopped before its first
    run ends; then the kvmple-built lab kernel installed with `lab install-kernel --campaign`
    and booted once by kexec: `uname -r` is its release, kvm_amd loads from its modules, and
    the campaign resumes by itself on it and completes, stored like any run."""
    out, manifest = built
    kexec = ssh_ok(lab, "cat", "/etc/default/kexec")
    assert kexec.count("LOAD_KEXEC=false") == 1  # no reboot is a kexec: a panic falls back
    before = ssh_ok(lab, "uname", "-r")
    before_halt_poll = ssh_ok(lab, "cat", "/sys/module/kvm/parameters/halt_poll_ns")
    start = time.monotonic()
    campaign = _register_campaign(lab)
    STAGES["register campaign (stopped in its first run)"] = time.monotonic() - start
    start = time.monotonic()
    done = kvmple(lab, "lab", "install-kernel", NAME, "--build", str(out), "--campaign", campaign,
                  "--json", timeout=2400)  # fmt: skip
    STAGES["install-kernel (stage + kexec + SSH back)"] = time.monotonic() - start
    print(f"install-kernel: {done.stdout.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    result, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())  # then a summary line
    STAGES["  of which staged"] = float(result["staged_s"])
    STAGES["  of which kexec -> SSH on the new kernel"] = float(result["back_s"])
    assert result["running"] == manifest.release != before
    assert ssh_ok(lab, "uname", "-r") == manifest.release
    # kvm_amd loaded at boot from the new release's own modules; its kvm tracepoints exist
    module = kvmple(lab, "lab", "ssh", NAME, "--", "modinfo", "-n", "kvm_amd")
    assert ssh_ok(lab, "cat", "/sys/module/kvm_amd/parameters/npt") in ("1", "Y")
    assert ssh_ok(lab, "test", "-e", "/sys/kernel/tracing/events/kvm/kvm_exit/hist") == ""
    start = time.monotonic()
    unit = _wait_resumed(lab)
    STAGES["resumed campaign (SSH back -> resume unit done)"] = time.monotonic() - start
    assert any(ln.startswith(f"Finished {RESUME_UNIT}") for ln in unit), unit
    assert not any("Failed" in ln or "status=" in ln for ln in unit), unit
    enabled = kvmple(lab, "lab", "ssh", NAME, "--", "systemctl", "is-enabled", "kvmple-resume")
    assert enabled.stdout.strip() == "disabled", enabled.stdout + enabled.stderr  # one shot
    export = json.loads(ssh_ok(lab, "kvmple", "results", "export", "--format", "json"))
    (exported,) = [c for c in export["campaigns"] if str(c["meta"]["id"]) == campaign]
    assert exported["meta"]["status"] == "complete", exported["meta"]
    assert exported["meta"]["host"]["kernel_release"] == manifest.release  # re-recorded
    _assert_lab_smoke(exported)
    # halt_poll_ns is restored after the campaign (the same default on both kernels)
    assert ssh_ok(lab, "cat", "/sys/module/kvm/parameters/halt_poll_ns") == before_halt_poll
    assert module.returncode == 0, module.stderr
    assert module.stdout.strip().startswith(f"/lib/modules/{manifest.release}/"), module.stdout


def _assert_lab_smoke(exported: dict[str, Any]) -> None:
    """What a stored lab-smoke campaign must show: 4 ok runs under the real kvm_amd, every
    factor read back, the guests' vCPU threads pinned, kvm exits counted."""
    runs = [r for r in exported["runs"] if r["status"] == "ok"]
    # PLE is unavailable (collapsed); PV sched yield off/on x 0/1 busy loops
    assert len(runs) == 4, [(r["status"], r["reason"]) for r in exported["runs"]]
    print("knobs read back in one run:", json.dumps(runs[0]["provenance"]["knobs"])[:3000])
    seen_pv = set()
    for run_ in runs:
        knobs = run_["provenance"]["knobs"]
        # every factor read back under the real kvm_amd: PV sched yield inside both guests
        # (CPUID 0x40000001), cpu-pm from each QEMU's argv, halt_poll_ns from sysfs
        pv = knobs["pv.sched_yield"]
        seen_pv.add(pv["value"])
        assert len(pv["in_guest"]) == 2, pv
        for reading in pv["in_guest"].values():
            assert reading["value"] == pv["value"], pv
            assert reading["evidence"].startswith("CPUID 0x40000001 EAX="), pv
        assert knobs["cpu-pm"]["value"] == "off" and len(knobs["cpu-pm"]["guests"]) == 2, knobs
        assert "100000" in json.dumps(knobs["kvm.halt_poll_ns"]), knobs
        assert "unavailable" in knobs["ple"], knobs
        provenance = run_["provenance"]
        assert provenance["host"]["accelerator"] == "kvm"
        assert provenance["host"]["kvm_module"] == "kvm_amd"
        for role in ("bench", "spin"):
            assert provenance["affinity"][role] == {"0": [0]}, provenance["affinity"]
            assert provenance["vcpu_threads"][role], provenance["vcpu_threads"]
        assert run_["figures"]["time"] > 0
        # the typed evidence record: real kvm_amd exits counted over the run's window by the
        # kvm:kvm_exit hist triggers, and directed-yield statistics per guest (a value or
        # "unavailable" with the reason, never absent)
        kvm = run_["kvm"]
        assert kvm is not None, run_
        assert "unavailable" not in kvm["exits"], kvm["exits"]
        assert kvm["exits"]["exits"] > 0, kvm["exits"]
        assert kvm["directed_yield"], kvm
    assert seen_pv == {"off", "on"}
    assert "pause filter" in json.dumps(exported["meta"]) + json.dumps(exported["runs"])


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (("--cpu-model", "no-such-cpu"), "did not start"),
        (("--ready-timeout", "15", "--cold-boot"), "did not answer SSH"),
    ],
    ids=["cpu-model-rejected", "never-answers"],
)
def test_failed_lab_host_leaves_nothing(
    tmp_path: Path, extra: tuple[str, ...], expect: str
) -> None:
    _prerequisites()
    env = _env(tmp_path)
    failed = kvmple(env, "lab", "up", "amd", "--name", "t-bad", *extra, timeout=UP_TIMEOUT)
    assert failed.returncode == 7, failed.stderr
    last = [ln for ln in failed.stderr.splitlines() if ln.startswith("kvmple: error:")]
    assert last and expect in last[0], failed.stderr
    assert "Traceback" not in failed.stderr
    assert "kvmple-lab-t-bad" not in lab_domains()
    state = Path(env["KVMPLE_STATE_DIR"]) / "vm"
    assert not list((state / "records").glob("*.json"))
    assert not list((state / "guests").iterdir())

"""Lab tier, AMD part: an emulated AMD-V host (QEMU TCG, qemu64,+svm,+npt) booted with
`kvmple lab up amd`, and kvmple's own commands run inside it against a real kvm_amd.

One lab host serves the module (booting one takes minutes under TCG): up -> doctor ->
module reload (and its refusal while a VM runs) -> down. The failure tests (a CPU model
QEMU rejects, a lab host that never answers in time) boot their own and must leave nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.run import run
from tests.support import need, need_program, need_root

pytestmark = [pytest.mark.lab, pytest.mark.slow]

URI = "qemu:///system"
CACHE = Path("/var/cache/kvmple-tests")
NAME = "t-amd"
UP_TIMEOUT = 1800.0  # an image build (first run: ~15 min) + the boot (2-5 min under load)


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
    """A running amd lab host named NAME; the env that reaches it."""
    _prerequisites()
    env = _env(tmp_path_factory.mktemp("lab-amd"))
    start = time.monotonic()
    up = kvmple(env, "lab", "up", "amd", "--name", NAME, timeout=UP_TIMEOUT)
    print(f"lab up: {time.monotonic() - start:.0f} s; {up.stdout.strip()}")
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        yield env
    finally:
        down = kvmple(env, "lab", "down", NAME, timeout=300)
        assert down.returncode == 0, down.stderr
        assert f"kvmple-lab-{NAME}" not in lab_domains()


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
    cpu = ssh(lab, "grep", "-m1", "-o", "-w", "svm", "/proc/cpuinfo")
    assert cpu.stdout.strip() == "svm", cpu.stderr
    params = ssh(lab, "cat", "/sys/module/kvm_amd/parameters/npt")
    assert params.stdout.strip() in ("1", "Y"), params.stderr  # nested paging is on


def test_doctor_inside_says_kvm_without_ple(lab: dict[str, str]) -> None:
    start = time.monotonic()
    doctor = ssh(lab, "kvmple", "doctor", "--json", timeout=900)
    print(f"doctor inside the lab host: {time.monotonic() - start:.0f} s")
    doc = json.loads(doctor.stdout)
    assert doc["verdict"] == "kvm", doc["reason"]
    assert doc["kvm"]["boot_probe"]["kvm"]["passed"] is True
    assert doc["kvm"]["module"]["name"] == "kvm_amd"
    assert "no PLE: the (emulated) CPU has no pause filter" in doc["reason"]
    assert doc["ple"]["available"] is False
    assert doc["host"]["machine"]["emulated"] is True
    assert "kvm" in doc["libvirt"]["domain_types"]


def test_module_reload_reads_back_and_is_refused_while_a_vm_runs(lab: dict[str, str]) -> None:
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


def test_kvm_campaign_inside(lab: dict[str, str]) -> None:
    """lab-smoke inside the lab host: two nested libvirt type='kvm' guests pinned to its CPU
    0, hackbench vs 0/1 busy loops x PV sched yield off/on, cpu-pm off and kvm.halt_poll_ns
    set and read back, PLE recorded unavailable, stored like any run."""
    before_halt_poll = ssh(lab, "cat", "/sys/module/kvm/parameters/halt_poll_ns").stdout.strip()
    start = time.monotonic()
    campaign = kvmple(
        lab, "lab", "ssh", "--timeout", "3000", NAME, "--",
        "env", "-C", "/opt/kvmple", "kvmple", "run", "playbooks/lab-smoke.yaml",
        "--allow-unavailable", "--no-report",
        timeout=3100,
    )  # fmt: skip
    print(f"lab-smoke campaign inside the lab host: {time.monotonic() - start:.0f} s")
    export = ssh(lab, "kvmple", "results", "export", "--format", "json")
    assert export.returncode == 0, export.stderr
    (exported,) = json.loads(export.stdout)["campaigns"]
    if campaign.returncode != 0 and "without an exit status" in campaign.stderr:
        # Seen twice in session 7 under pytest, never by hand: the in-lab `kvmple run` ended
        # without an exit status (killed by a signal) about when it finished. Tolerated only
        # when the campaign is stored complete; the lab host's journal is kept in the output.
        print("lab ssh lost the campaign's exit status:", campaign.stderr[-600:])
        journal = ssh(lab, "journalctl", "-b", "--no-pager", "-n", "80")
        print(journal.stdout[-6000:])
        assert exported["meta"]["status"] == "complete", campaign.stderr[-3000:]
    else:
        assert campaign.returncode == 0, campaign.stderr[-3000:]
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
    # halt_poll_ns is restored after the campaign
    after = ssh(lab, "cat", "/sys/module/kvm/parameters/halt_poll_ns")
    assert after.stdout.strip() == before_halt_poll, after.stdout


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (("--cpu-model", "no-such-cpu"), "did not start"),
        (("--ready-timeout", "15"), "did not answer SSH"),
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

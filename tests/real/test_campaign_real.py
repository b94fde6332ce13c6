"""Real tier: a smoke-shaped campaign end to end under TCG through real libvirt, SSH, RabbitMQ
and busy loops, interrupted twice (SIGTERM, then SIGKILL) and resumed to an exact run count.

One campaign serves every check. It is smoke.yaml cut to 2 cells (0 and 2 busy loops, 16-byte
messages) x 2 runs, because its guests boot three times whatever its size: the full smoke
matrix (6 cells x 3 runs) took 807 s of CI here and repeated what bench/campaign.py measures.
- SIGTERM midway: exit 130, status interrupted, nothing left running (virsh, registry);
- SIGKILL midway: the owner's reaper destroys its guests within 10 s; ``--resume`` completes;
- exactly 2 ok runs per cell, no duplicated key, PLE recorded as unavailable with the reason,
  provenance and evidence on every run, throughput falls as spinners rise;
- the RFC-style report and the HTML report come out of the stored runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import load_playbook
from kvmple.results import open_store
from kvmple.results.evidence import Unavailable
from tests.support import TimeBudget, budget_below_timeout, need, need_program, need_root

pytestmark = [pytest.mark.real, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "playbooks" / "smoke.yaml"
KVMPLE = [sys.executable, "-m", "kvmple.cli"]


def _virsh_domains(prefix: str) -> list[str]:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [name for name in out.split() if name.startswith(prefix)]


def _ok_runs(db: str, campaign_id: str) -> int:
    with open_store(db) as store:
        return sum(1 for r in store.runs(campaign_id) if r.status == "ok")


def _campaign_id(db: str) -> str | None:
    with open_store(db) as store:
        campaigns = store.campaigns()
    return campaigns[-1].id if campaigns else None


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*KVMPLE, *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=False,
    )


def _cut_smoke(tmp_path: Path) -> Path:
    """smoke.yaml with 2 cells x 2 runs (same guests, workloads, factor and order seed)."""
    text = SMOKE.read_text()
    for old, new in (
        ("spinners: {values: [0, 1, 2]", "spinners: {values: [0, 2]"),
        ("size: {values: [8, 16]", "size: {values: [16]"),
        ("repetitions: 3", "repetitions: 2"),
    ):
        assert old in text, f"smoke.yaml changed: {old!r} not found"
        text = text.replace(old, new)
    path = tmp_path / "smoke-cut.yaml"
    path.write_text(text)
    return path


def _stop(proc: subprocess.Popen[bytes], grace: float = 120.0) -> None:
    """SIGTERM first (kvmple then stops its guests and restores knobs), SIGKILL after
    ``grace`` s: a test out of time leaves as little running as kvmple can clean up."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


def _wait_for_runs(
    proc: subprocess.Popen[bytes], db: str, count: int, log: Path, budget: TimeBudget
) -> str:
    while not budget.spent:
        if proc.poll() is not None:
            pytest.fail(f"kvmple exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        campaign = _campaign_id(db) if Path(db.removeprefix("sqlite://")).exists() else None
        if campaign and _ok_runs(db, campaign) >= count:
            return campaign
        time.sleep(2)
    _stop(proc)
    budget.fail(f"waiting for {count} ok runs; log tail: {log.read_text()[-1500:]}")


def test_smoke_campaign_interrupted_resumed_and_reported(
    shared_cache: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    need_root()
    need_program("virsh")
    need(
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "uri"], check=False, capture_output=True, timeout=30
        ).returncode
        == 0,
        "libvirtd is not answering on qemu:///system (scripts/setup-host.sh starts it)",
    )
    db = f"sqlite://{tmp_path / 'results.sqlite'}"
    log = tmp_path / "kvmple.log"
    playbook = _cut_smoke(tmp_path)
    plan = build_plan(load_playbook(playbook).playbook, {"ple": "x"})
    assert len(plan.runs) == 4
    # The test's own deadline, below pytest's timeout: out of time, it stops kvmple with
    # SIGTERM (guests cleaned up) and fails saying which phase took how long.
    budget = TimeBudget(budget_below_timeout(request), "smoke campaign test")

    # 1. SIGTERM midway: clean interruption.
    with budget.phase("first run until 1 ok run (guests boot)"):
        proc = _start(["run", str(playbook), "--allow-unavailable", "--db", db, "--no-report"], log)
        campaign = _wait_for_runs(proc, db, 1, log, budget)
    with budget.phase("SIGTERM and clean interruption"):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=min(120, budget.remaining())) == 130, log.read_text()[-3000:]
    assert "kvmple run --resume" in log.read_text()
    prefix = f"kvmple-{campaign}-"
    assert _virsh_domains(prefix) == []
    with open_store(db) as store:
        assert store.campaign(campaign).status == "interrupted"
    after_term = _ok_runs(db, campaign)

    # 2. Resume, then SIGKILL midway: nothing in kvmple run can clean up, its reaper
    # (vm/reaper.py) destroys the guests; poll up to 10 s (a bound, not a speed test).
    with budget.phase("resume until 1 more ok run (guests boot again)"):
        proc = _start(["run", "--resume", campaign, "--db", db, "--no-report"], log)
        _wait_for_runs(proc, db, after_term + 1, log, budget)
        proc.kill()
        proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while _virsh_domains(prefix) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _virsh_domains(prefix) == [], "guests outlived their SIGKILLed kvmple run"

    # 3. Resume to the end: leftovers reaped, the exact run count.
    with budget.phase(f"resume to the end ({len(plan.runs)} runs in all)"):
        final_log = tmp_path / "final.log"
        proc = _start(["run", "--resume", campaign, "--db", db], final_log)
        try:
            proc.wait(timeout=budget.remaining())
        except subprocess.TimeoutExpired:
            _stop(proc)
            budget.fail(
                f"{_ok_runs(db, campaign)} of {len(plan.runs)} runs stored; "
                f"log tail: {final_log.read_text()[-1500:]}"
            )
    output = final_log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert _virsh_domains(prefix) == []
    registry_dir = Path(os.environ["KVMPLE_STATE_DIR"])
    assert not [p for p in registry_dir.rglob(f"{prefix}*.json")], "registry records left"

    with open_store(db) as store:
        meta = store.campaign(campaign)
        runs = store.runs(campaign)
    assert meta.status == "complete"
    ok = [r for r in runs if r.status == "ok"]
    assert sorted(r.run_key for r in ok) == sorted(r.key for r in plan.runs)
    per_cell: dict[str, list[float]] = defaultdict(list)
    for record in ok:
        assert record.cell["ple"] == "unavailable"
        assert record.figures["transfers_per_sec"] > 0
        assert record.provenance["affinity"]["amqp"] == {"0": [0], "1": [1]}
        assert record.provenance["knobs"]["ple"]["unavailable"]
        # the typed KVM evidence says why each part is missing here (TCG), never zero
        assert record.kvm is not None
        assert isinstance(record.kvm.exits, Unavailable) and "TCG" in record.kvm.exits.unavailable
        assert set(record.kvm.directed_yield) == {"amqp", "spin"}
        assert all(
            isinstance(y, Unavailable) and "TCG" in y.unavailable
            for y in record.kvm.directed_yield.values()
        )
        assert not isinstance(record.kvm.confounders, Unavailable)
        assert set(record.evidence["host_cpu"]["cpus"]) == {0, 1}
        # the busy loops as they ran over the whole window, read back from the guest
        loops = record.evidence["load"]["spin"]["loops"]
        assert [loop["cpu"] for loop in loops] == list(range(record.cell["spinners"]))
        assert all(loop["running"] and loop["share"] >= 0.6 for loop in loops)
        lifetime = record.evidence["load"]["spin"]["sample_s"]
        assert lifetime >= 0.95 * record.measure_seconds or not loops  # two guest clocks
        assert record.raw
        per_cell[f"{record.cell['size']}/{record.cell['spinners']}"].append(
            record.figures["transfers_per_sec"]
        )
    assert all(len(v) == 2 for v in per_cell.values()) and len(per_cell) == 2
    assert "PLE" in meta.notes["unavailable"]["ple"] or meta.notes["unavailable"]["ple"]

    # Throughput falls as spinners rise (the overcommit effect is real under TCG).
    mean = {s: sum(per_cell[f"16/{s}"]) / 2 for s in (0, 2)}
    assert mean[2] < mean[0], f"transfers/s by busy loops: {mean}"

    # The report printed at the end: the RFC-shaped table and the HTML report.
    assert "overcommit" in output.lower()
    html = next(line for line in output.splitlines() if line.startswith("HTML report: "))
    html_path = Path(html.removeprefix("HTML report: ").strip())
    assert html_path.exists() and "<html" in html_path.read_text()[:2000].lower()

    budget.check("before 'kvmple report'")
    report = subprocess.run(
        [*KVMPLE, "report", campaign, "--db", db, "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=min(300, budget.remaining()),
        check=True,
    )
    cells = json.loads(report.stdout)["cells"]
    # the evidence beside the throughput says why it is missing under TCG
    assert all(
        c["kvm_evidence"]["exits"].startswith("unavailable: guests run under") for c in cells
    )
    assert "evidence per cell" in html_path.read_text()

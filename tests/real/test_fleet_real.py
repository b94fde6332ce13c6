"""Real tier: a fleet of two loopback "hosts" (OpenSSH servers on 127.0.0.1 with their own
ports and host keys), each running kvmple from this checkout with its own state/data
directories and its own host name, both writing their campaigns to one real PostgreSQL
store; then 'kvmple report --hosts' shows them side by side.

The playbook is nightly-mini with one run per cell and no busy loops (1 run per host: PLE
is unavailable under TCG). The hosts run one after the other (``parallel: 1``): four TCG
guests at once on this 2-CPU machine (already shared with other tests) made guest SSH
logins time out; the fan-out's parallel path is covered by the unit tier
(tests/unit/test_fleet_fanout.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from kvmple.results import open_store
from tests.real.fleet_sshd import inventory_entry, loopback_host
from tests.support import need, need_program, need_root

pytestmark = [
    pytest.mark.real,
    pytest.mark.slow,
    pytest.mark.timeout(3000),
]

ROOT = Path(__file__).resolve().parents[2]
KVMPLE = [sys.executable, "-m", "kvmple.cli"]
PG_URL = os.environ.get(
    "KVMPLE_TEST_PG_URL", "postgresql://kvmple_test:kvmple_test@127.0.0.1:5432/kvmple_test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throw-away schema in the test database, as a store URL."""
    import psycopg

    try:
        with psycopg.connect(PG_URL, connect_timeout=5):
            problem = ""
    except Exception as exc:  # any failure to connect is the reason to report
        problem = str(exc).strip().splitlines()[0]
    need(
        not problem, f"PostgreSQL at {PG_URL} does not answer: {problem} (scripts/test-services.sh)"
    )
    schema = f"fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_two_hosts_write_one_postgresql_store_and_report_side_by_side(
    shared_cache: Path, tmp_path: Path, pg_url: str
) -> None:
    need_root()
    for program in ("sshd", "ssh-keygen", "virsh", "qemu-system-x86_64"):
        need_program(program)
    need(
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "uri"], check=False, capture_output=True, timeout=30
        ).returncode
        == 0,
        "libvirtd is not answering on qemu:///system (scripts/setup-host.sh starts it)",
    )
    playbook = tmp_path / "fleet-mini.yaml"
    text = (ROOT / "playbooks" / "nightly-mini.yaml").read_text()
    text = text.replace("name: nightly-mini", "name: fleet-mini").replace(
        "repetitions: 2", "repetitions: 1"
    )
    text = text.replace("timeouts: {boot: 300,", "timeouts: {boot: 900,")  # a loaded host
    # no busy loops: on this shared 2-CPU machine the spin workload's own check (each loop
    # must get >= 75% of its vCPU) failed under other tests' load; the fan-out is the point
    text = text.replace("spinners: {values: [0, 2],", "spinners: {values: [0],")
    assert "repetitions: 1" in text and "boot: 900" in text and "values: [0]," in text
    playbook.write_text(text)
    with ExitStack() as stack:
        hosts = [
            stack.enter_context(loopback_host(name, tmp_path / "sshd" / name))
            for name in ("lab-intel", "lab-amd")
        ]
        entries = {}
        for host in hosts:
            env = {
                "KVMPLE_HOSTNAME": host.name,
                "KVMPLE_STATE_DIR": str(tmp_path / host.name / "state"),
                "KVMPLE_DATA_DIR": str(tmp_path / host.name / "data"),
                "KVMPLE_CACHE_DIR": str(shared_cache),
                "KVMPLE_KEY_DIR": str(shared_cache / "ssh"),
                "KVMPLE_NO_PROGRESS": "1",
                "PYTHONPATH": str(ROOT),
            }
            entries[host.name] = inventory_entry(host, [sys.executable, "-m", "kvmple.cli"], env)
        inventory = tmp_path / "fleet.yaml"
        inventory.write_text(yaml.safe_dump({"store": pg_url, "parallel": 1, "hosts": entries}))
        done = subprocess.run(
            [*KVMPLE, "fleet", "run", str(inventory), str(playbook), "--allow-unavailable"],
            capture_output=True,
            text=True,
            timeout=2400,
            cwd=ROOT,
            check=False,
            env={**os.environ, "KVMPLE_DATA_DIR": str(tmp_path / "controller")},
        )
    logs = "\n".join(
        p.read_text()[-3000:] for p in (tmp_path / "controller").rglob("fleet/*/lab-*.log")
    )
    assert len(logs.split("--- stderr ---")) == 3, logs  # one log per host
    assert done.returncode == 0, done.stdout + done.stderr + logs
    print("\n" + done.stdout)
    with open_store(pg_url) as store:
        campaigns = {m.host["hostname"]: m for m in store.campaigns()}
        assert set(campaigns) == {"lab-intel", "lab-amd"}
        for meta in campaigns.values():
            assert meta.status == "complete" and meta.name == "fleet-mini"
            runs = store.runs(meta.id)
            assert sum(r.status == "ok" for r in runs) == 1
            assert meta.notes["unavailable"]["ple"]
    ids = [campaigns["lab-intel"].id, campaigns["lab-amd"].id]
    for campaign in ids:
        assert campaign in done.stdout
    # each host's own data directory has its campaign log: the runs happened "there"
    for name, meta in campaigns.items():
        assert (tmp_path / name / "data" / "campaigns" / meta.id / "campaign.log").is_file()

    report = subprocess.run(
        [*KVMPLE, "report", "--hosts", *ids, "--db", pg_url],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    print(report.stdout)
    lines = report.stdout.splitlines()
    header = next(line for line in lines if line.startswith("cell"))
    assert "lab-intel" in header and "lab-amd / lab-intel" in header
    rows = [line for line in lines if line.startswith("ple=")]
    assert len(rows) == 1  # spinners 0, size 16, PLE unavailable
    # without names: the newest campaign of every host that ran the newest playbook
    latest = subprocess.run(
        [*KVMPLE, "report", "--hosts", "--db", pg_url, "--format", "markdown"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert latest.returncode == 0, latest.stderr
    assert "| lab-amd |" in latest.stdout.replace("lab-amd /", "") or "lab-amd" in latest.stdout

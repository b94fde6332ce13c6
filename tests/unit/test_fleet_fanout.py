"""The fan-out over real SSH: two loopback OpenSSH "hosts" (own ports and host keys) run a
stand-in kvmple program (a shell script that records what it was given and answers like
'kvmple run'); an unreachable host and a host with the wrong pinned key fail cleanly.
The real tier runs the real kvmple on both hosts: tests/real/test_fleet_real.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kvmple.cli import main
from kvmple.fleet.fanout import run_fleet
from kvmple.fleet.inventory import load_inventory
from kvmple.remote import free_port
from tests.real.fleet_sshd import LoopbackHost, inventory_entry, loopback_host
from tests.support import need_program, need_root

# what 'kvmple run --json' prints (docs/run-json.md), recorded (tests/fixtures)
DOCUMENT = (Path(__file__).parents[1] / "fixtures" / "run_json_lines.jsonl").read_text()
FAKE_KVMPLE = f"""#!/bin/sh
# stand-in for 'kvmple run PLAYBOOK --no-report --json --db URL ...'
out="$FAKE_OUT"
printf '%s\\n' "$@" > "$out/args-$FAKE_NAME"
cp "$2" "$out/playbook-$FAKE_NAME"
if [ "$FAKE_FAIL" = 1 ]; then
  echo "kvmple: error: guest amqp did not boot" >&2
  echo "  hint: stored runs are kept: kvmple run --resume fake-$FAKE_NAME continues" >&2
  exit 12
fi
echo "campaign fake-$FAKE_NAME: 2 ok runs, 1 guest boot(s)" >&2
echo '{DOCUMENT.splitlines()[0].replace("smoke-20261129-195501-3f2a", "fake-@NAME@")}' \\
  | sed "s/@NAME@/$FAKE_NAME/"
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LoopbackHost]]:
    need_root()
    need_program("sshd")
    need_program("ssh-keygen")
    base = tmp_path_factory.mktemp("fleet-sshd")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(loopback_host(n, base / n)) for n in ("alpha", "beta")]


def _inventory(tmp_path: Path, hosts: list[LoopbackHost], extra: dict[str, object]) -> Path:
    program = tmp_path / "fake-kvmple"
    program.write_text(FAKE_KVMPLE)
    program.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    entries = {
        h.name: inventory_entry(
            h,
            [str(program)],
            {"FAKE_OUT": str(out), "FAKE_NAME": h.name, "FAKE_FAIL": str(int(h.name == "beta"))},
        )
        for h in hosts
    }
    entries.update(extra)  # type: ignore[arg-type]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"store": "postgresql://u:p@db/k", "hosts": entries}))
    return path


def test_fan_out_collects_exit_codes_and_campaign_ids(
    hosts: list[LoopbackHost], tmp_path: Path
) -> None:
    inventory = load_inventory(_inventory(tmp_path, hosts, {}))
    playbook = tmp_path / "mini.yaml"
    playbook.write_text("name: mini\n")
    outcomes = run_fleet(inventory, playbook, allow_unavailable=True, log_dir=tmp_path / "logs")
    alpha, beta = outcomes
    assert (alpha.host, alpha.exit_code, alpha.campaign_id) == ("alpha", 0, "fake-alpha")
    assert alpha.run is not None and (alpha.run.planned, alpha.run.ok) == (12, 12)
    assert (beta.host, beta.exit_code, beta.campaign_id) == ("beta", 12, "fake-beta")
    assert beta.run is None  # no document from a campaign that stopped: the hint names it
    assert beta.message == "guest amqp did not boot"
    out = tmp_path / "out"
    args = (out / "args-alpha").read_text().split("\n")
    workdir = inventory.hosts["alpha"].workdir
    assert args[:7] == [
        "run",
        f"{workdir}/mini.yaml",
        "--no-report",
        "--json",
        "--db",
        "postgresql://u:p@db/k",
        "--allow-unavailable",
    ]
    assert (out / "playbook-alpha").read_text() == "name: mini\n"  # copied over SFTP
    assert "campaign fake-alpha" in (tmp_path / "logs" / "alpha.log").read_text()
    assert "did not boot" in (tmp_path / "logs" / "beta.log").read_text()


def test_unreachable_and_wrong_key_hosts_fail_cleanly(
    hosts: list[LoopbackHost], tmp_path: Path
) -> None:
    alpha = inventory_entry(hosts[0], ["/bin/true"], {})
    nobody = dict(alpha, port=free_port())
    wrong_key = dict(alpha, host_keys=[hosts[1].host_key_line])
    path = _inventory(tmp_path, hosts[:1], {"nobody": nobody, "impostor": wrong_key})
    playbook = tmp_path / "mini.yaml"
    playbook.write_text("name: mini\n")
    inventory = load_inventory(path)
    outcomes = {
        o.host: o
        for o in run_fleet(inventory, playbook, hosts=["nobody", "impostor"], log_dir=tmp_path)
    }
    assert outcomes["nobody"].exit_code == -1 and outcomes["nobody"].campaign_id is None
    assert outcomes["impostor"].exit_code == -1
    assert "host key" in outcomes["impostor"].message.lower()


def test_cli_summary_and_exit_code(
    hosts: list[LoopbackHost], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _inventory(tmp_path, hosts, {})
    playbook = Path(__file__).resolve().parents[2] / "playbooks" / "nightly-mini.yaml"
    code = main(["fleet", "run", str(path), str(playbook), "--allow-unavailable"])
    captured = capsys.readouterr()
    assert code == 12
    assert "fake-alpha" in captured.out and "beta" in captured.out
    assert "1 of 2 hosts failed: beta: guest amqp did not boot" in captured.err
    assert main(["fleet", "run", str(path), str(playbook), "--host", "gamma"]) == 2
    assert main(["fleet", "run", str(path), str(tmp_path / "absent.yaml")]) == 3


@pytest.mark.usefixtures("ctrl_c")
def test_ctrl_c_cuts_every_connection_promptly(hosts: list[LoopbackHost], tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    from kvmple.errors import Interrupted

    program = tmp_path / "slow-kvmple"
    program.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid-$FAKE_NAME\nexec sleep 60\n")
    program.chmod(0o755)
    entries = {h.name: inventory_entry(h, [str(program)], {"FAKE_NAME": h.name}) for h in hosts}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"hosts": entries}))
    playbook = tmp_path / "mini.yaml"
    playbook.write_text("name: mini\n")

    def interrupt_when_running() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all((tmp_path / f"pid-{h.name}").exists() for h in hosts):
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(Interrupted, match="every SSH connection was cut"):
        run_fleet(load_inventory(path), playbook, log_dir=tmp_path / "logs")
    assert time.monotonic() - started < 30  # not the remote command's 60 s

"""Loopback "hosts" for the fleet tests: OpenSSH servers on 127.0.0.1, each with its own
port and host key, authorizing kvmple's installation key."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvmple.keys import installation_key
from kvmple.remote import free_port
from kvmple.run import background


@dataclass(frozen=True)
class LoopbackHost:
    name: str
    port: int
    host_key_line: str
    key: Path  # the client's private key


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        timeout=30,
        capture_output=True,
    )
    fields = Path(f"{path}.pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


@contextlib.contextmanager
def loopback_host(
    name: str, directory: Path, sshd: str = "/usr/sbin/sshd"
) -> Iterator[LoopbackHost]:
    """Run one sshd on 127.0.0.1:<free port> until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key_line = _keygen(directory / "host_ed25519.key")
    key = installation_key()
    (directory / "authorized_keys").write_text(key.public_line + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_ed25519.key'}\n"
        f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    log = directory / "sshd.log"
    with background([sshd, "-D", "-e", "-f", str(config)], log=log) as proc:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd {name} did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield LoopbackHost(name, port, host_key_line, key.private)


def inventory_entry(
    host: LoopbackHost, kvmple: list[str], env: dict[str, str]
) -> dict[str, object]:
    """The inventory mapping of one loopback host (for yaml.safe_dump)."""
    return {
        "address": "127.0.0.1",
        "port": host.port,
        "user": "root",
        "key": str(host.key),
        "host_keys": [host.host_key_line],
        "kvmple": kvmple,
        "env": env,
        "workdir": f"/tmp/kvmple-fleet-{host.name}-{host.port}",
        "labels": {"role": "loopback"},
    }

"""``kvmple vm ssh`` and ``kvmple lab ssh``: one command in, or an interactive login to, a
guest kvmple recorded, with its installation key and pinned host keys (kvmple.remote)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmple.remote import SSHExecutor
from kvmple.run import Result
from kvmple.vm.registry import GuestRecord


def command_argv(remote: Sequence[str] | None) -> list[str]:
    """The command after argparse's REMAINDER: only a leading ``--`` is the separator; a
    ``--`` further on belongs to the command (``grep -- -x file``)."""
    argv = list(remote or [])
    return argv[1:] if argv[:1] == ["--"] else argv


def run_streaming(
    record: GuestRecord,
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    timeout: float,
    name: str,
) -> Result:
    """Run ``argv`` in the guest, each stdout line to ``on_line`` as it comes (GuestError
    when the guest cannot be reached; the command's own exit code is in the result)."""
    with SSHExecutor(
        "127.0.0.1",
        record.ssh_port,
        record.ssh_user,
        Path(record.ssh_key),
        record.host_keys,
        name=name,
    ) as executor:
        return executor.stream(argv, on_line, timeout, check=False)


def login(record: GuestRecord) -> None:
    """Replace this process with an interactive ssh session to the guest."""
    exec_interactive_ssh(
        port=record.ssh_port,
        user=record.ssh_user,
        key=str(record.ssh_key),
        host_keys=record.host_keys,
        known_hosts=Path(record.run_dir) / "known_hosts",
    )


def exec_interactive_ssh(
    *, port: int, user: str, key: str, host_keys: Sequence[str], known_hosts: Path
) -> None:
    """Replace this process with an interactive OpenSSH session to 127.0.0.1:``port``.

    paramiko has no terminal handling, so an interactive login hands the terminal to
    ``ssh`` (ssh(1)), held to the same policy as :class:`SSHExecutor`: the installation key
    only, the guest's pinned host keys written to ``known_hosts``, strict checking. Returns
    only if exec fails (OSError).
    """
    label = f"[127.0.0.1]:{port}"
    known_hosts.write_text("".join(f"{label} {host_key}\n" for host_key in host_keys))
    argv = [
        "ssh",
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-i", key,
        "-p", str(port),
        f"{user}@127.0.0.1",
    ]  # fmt: skip
    os.execvp("ssh", argv)

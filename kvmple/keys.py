"""The installation's SSH key pair: one ed25519 key per kvmple installation, never a password.

Image builds put the public half into every guest's ``authorized_keys``; the VM layer logs in
with the private half. The pair lives under ``paths.state_dir()/ssh`` (mode 0600), created
with ``ssh-keygen`` on first use; ``KVMPLE_KEY_DIR`` overrides the directory (the test suite
shares one key with its persistent image cache that way, since the key is baked into images).
Creation is serialised by a lock and published atomically (generated under a temporary name,
then ``os.replace``d) so concurrent first uses agree on one key and nobody ever sees half a
key.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmple import paths
from kvmple.errors import HostError
from kvmple.run import run, which

KEY_NAME = "id_ed25519"


@dataclass(frozen=True)
class InstallKey:
    """Paths of the key pair and the public key line (``ssh-ed25519 AAAA... comment``)."""

    private: Path
    public: Path
    public_line: str


def key_dir() -> Path:
    """Directory holding the pair (created 0700)."""
    override = os.environ.get("KVMPLE_KEY_DIR")
    directory = Path(override) if override else paths.state_dir() / "ssh"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def installation_key() -> InstallKey:
    """Return the installation key pair, creating it on first use."""
    directory = key_dir()
    private = directory / KEY_NAME
    public = directory / f"{KEY_NAME}.pub"
    if not (private.exists() and public.exists()):
        with (directory / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (private.exists() and public.exists()):
                _generate(directory, private, public)
    _check_mode(private)
    return InstallKey(private, public, public.read_text(encoding="utf-8").strip())


def _generate(directory: Path, private: Path, public: Path) -> None:
    if which("ssh-keygen") is None:
        raise HostError(
            "ssh-keygen not found: cannot create the installation SSH key",
            hint="install openssh-client (scripts/setup-host.sh)",
        )
    with tempfile.TemporaryDirectory(dir=directory, prefix=".new-") as tmp:
        staged = Path(tmp) / KEY_NAME
        comment = f"kvmple@{socket.gethostname()}"
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", staged],
            timeout=60,
            what="creating the installation SSH key",
        )
        os.chmod(staged, 0o600)
        # public first: a private key without its .pub is treated as "not there yet"
        os.replace(staged.with_suffix(".pub"), public)
        os.replace(staged, private)


def _check_mode(private: Path) -> None:
    mode = private.stat().st_mode & 0o777
    if mode & 0o077:
        raise HostError(
            f"{private} is readable by others (mode {mode:o}); ssh refuses such keys",
            hint=f"chmod 600 {private}",
        )

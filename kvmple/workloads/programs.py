"""Guest-side programs (kvmple/guest/*): where they live, and shipping them into a guest.

The image recipe installs them into /opt/kvmple/bin at build time; ``ensure_programs`` also
copies them at run time when missing or different (by content hash), so editing a program
never forces an image rebuild. They run with the guest's own /usr/bin/python3 (stdlib and
python3-amqp only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from kvmple.errors import WorkloadError
from kvmple.executor import Executor

GUEST_BIN = "/opt/kvmple/bin"
GUEST_PYTHON = "/usr/bin/python3"
PROGRAMS = ("kvmple-perftest", "kvmple-spin")


def guest_dir() -> Path:
    """The directory of the guest programs inside the installed kvmple package."""
    return Path(__file__).resolve().parent.parent / "guest"


def program_path(name: str) -> Path:
    """Local path of a guest program; WorkloadError if kvmple has no such program."""
    path = guest_dir() / name
    if name not in PROGRAMS or not path.is_file():
        raise WorkloadError(
            f"no guest program {name!r}", hint=f"guest programs: {', '.join(PROGRAMS)}"
        )
    return path


def digest(name: str) -> str:
    return hashlib.sha256(program_path(name).read_bytes()).hexdigest()


def ensure_programs(
    executor: Executor, names: Iterable[str] = PROGRAMS, *, bin_dir: str = GUEST_BIN
) -> list[str]:
    """Copy the named programs to ``bin_dir`` on ``executor`` unless already identical.

    One remote call compares hashes (sha256sum, in every Debian); returns the names copied.
    """
    wanted = {name: digest(name) for name in names}
    paths = [f"{bin_dir}/{name}" for name in wanted]
    # sha256sum exits 1 when a file is missing but still prints the others' hashes.
    result = executor.run(
        ["sha256sum", *paths], timeout=60, check=False, what="checking kvmple guest programs"
    )
    present = {}
    for line in result.stdout.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            present[parts[1].strip().lstrip("*")] = parts[0]
    copied = []
    for name, sha in wanted.items():
        remote = f"{bin_dir}/{name}"
        if present.get(remote) != sha:
            executor.put(program_path(name), remote, mode=0o755)
            copied.append(name)
    return copied


def program_argv(name: str, *args: str, bin_dir: str = GUEST_BIN) -> list[str]:
    """argv running a guest program with the guest's system python."""
    return [GUEST_PYTHON, f"{bin_dir}/{name}", *args]

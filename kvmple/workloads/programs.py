"""Guest-side programs (kvmple/guest/): where they live, and shipping them into a guest.

The image recipe installs them into /opt/kvmple/bin at build time; ``ensure_programs`` also
copies them at run time when missing or different (by content hash), so editing a program
never forces an image rebuild. Each program is a small executable plus the
``kvmple_guest`` package next to it (kvmple.image.guestfiles lists the files). They run
with the guest's own /usr/bin/python3 (stdlib and python3-amqp only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from kvmple.errors import WorkloadError
from kvmple.executor import Executor
from kvmple.image.guestfiles import GUEST_BIN, ShippedFile, guest_dir, programs, shipped

__all__ = ["GUEST_BIN", "GUEST_PYTHON", "PROGRAMS", "ensure_programs", "guest_dir"]

GUEST_PYTHON = "/usr/bin/python3"
PROGRAMS = programs()  # ("kvmple-perftest", "kvmple-spin")


def _files(names: Iterable[str]) -> list[ShippedFile]:
    """What ``names`` need in a guest; WorkloadError for a program kvmple does not have."""
    try:
        return shipped(names)
    except KeyError as exc:
        raise WorkloadError(
            f"no guest program {exc.args[0]!r}", hint=f"guest programs: {', '.join(programs())}"
        ) from None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_programs(
    executor: Executor, names: Iterable[str] = PROGRAMS, *, bin_dir: str = GUEST_BIN
) -> list[str]:
    """Copy the named programs (and the package they import) to ``bin_dir`` on ``executor``
    unless already identical; returns the names of the programs for which anything was
    copied (a changed package file counts for every program named).

    One remote call compares hashes (sha256sum, in every Debian). Raises WorkloadError for
    an unknown program, what ``executor`` raises for a failed copy.
    """
    wanted = list(dict.fromkeys(names))
    files = _files(wanted)
    paths = [f"{bin_dir}/{spec.relative}" for spec in files]
    # sha256sum exits 1 when a file is missing but still prints the others' hashes.
    result = executor.run(
        ["sha256sum", *paths], timeout=60, check=False, what="checking kvmple guest programs"
    )
    present = {}
    for line in result.stdout.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            present[parts[1].strip().lstrip("*")] = parts[0]
    copied: set[str] = set()
    for spec in files:
        remote = f"{bin_dir}/{spec.relative}"
        if present.get(remote) != _digest(spec.source):
            executor.put(spec.source, remote, mode=spec.mode)
            copied.update([spec.relative] if spec.relative in wanted else wanted)
    return [name for name in wanted if name in copied]


def program_argv(name: str, *args: str, bin_dir: str = GUEST_BIN) -> list[str]:
    """argv running a guest program with the guest's system python."""
    return [GUEST_PYTHON, f"{bin_dir}/{name}", *args]

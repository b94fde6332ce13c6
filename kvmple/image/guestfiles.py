"""The files a guest gets for kvmple's guest programs, and where they go.

kvmple/guest/ holds each program's executable (``kvmple-perftest``, ``kvmple-spin``: a
few lines) and the ``kvmple_guest`` package they import (the programs' code and the wire
protocol the host reads them with). A guest gets the same layout under ``GUEST_BIN``: the
executable finds ``kvmple_guest`` next to itself (Python puts a script's directory first on
sys.path), so on the host the programs run straight from kvmple/guest/ too.

One list (``shipped``) serves every copy step: the image build (recipe key
``guest_programs``), the image cache key (the files' content hashes) and the run-time copy
(``kvmple.workloads.programs.ensure_programs``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GUEST_BIN = "/opt/kvmple/bin"  # where guests keep the programs
PACKAGE = "kvmple_guest"  # the programs' package, shipped as GUEST_BIN/kvmple_guest/
PROGRAM_MODE = 0o755
MODULE_MODE = 0o644


@dataclass(frozen=True)
class ShippedFile:
    """One file of the guest programs: ``relative`` to GUEST_BIN (and to guest_dir())."""

    relative: str  # "kvmple-spin", "kvmple_guest/protocol.py"
    source: Path  # the file in this kvmple installation
    mode: int  # permission bits in the guest


def guest_dir() -> Path:
    """kvmple/guest/ of this installation: the programs as a guest gets them."""
    return Path(__file__).resolve().parent.parent / "guest"


def programs() -> tuple[str, ...]:
    """The names of the guest programs (the executables in kvmple/guest/), sorted."""
    return tuple(sorted(p.name for p in guest_dir().glob("kvmple-*") if p.is_file()))


def package_files() -> list[ShippedFile]:
    """Every module of the ``kvmple_guest`` package (no caches), sorted by path."""
    return [
        ShippedFile(f"{PACKAGE}/{path.name}", path, MODULE_MODE)
        for path in sorted((guest_dir() / PACKAGE).glob("*.py"))
    ]


def shipped(names: Iterable[str]) -> list[ShippedFile]:
    """The files to copy for the programs ``names``: the package they all import (once,
    whole: a few dozen KiB), then their executables. Empty when ``names`` is.

    Raises KeyError naming a program kvmple does not have."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    known = programs()
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise KeyError(unknown[0])
    executables = [ShippedFile(name, guest_dir() / name, PROGRAM_MODE) for name in wanted]
    return package_files() + executables

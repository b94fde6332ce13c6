"""Guests never outlive their owner: one small reaper process per kvmple process that owns
guests destroys them when that process dies, by any signal (SIGKILL and the OOM killer
included, which no handler or ``finally`` can catch).

The owner starts the reaper (``python -m kvmple.vm.reaper``, in its own session so a
terminal's Ctrl-C or hang-up does not reach it) the first time it is about to create a guest,
and keeps the write end of a pipe whose read end only the reaper holds. Before creating a
domain it writes ``own URI DOMAIN``; once the domain is destroyed or detached, ``disown
DOMAIN``. The kernel closes the pipe when the owner exits, however it exits: the reaper then
reads end-of-file, destroys the domains still owned (only those: a domain kvmple did not
announce is never touched), forgets the owner's records with their overlays
(``registry.forget``) in the state directories it announced (``dir STATE_DIR``) and exits.
Lines are tab-separated words. After a normal exit nothing is owned any more and the reaper
just exits. ``kvmple gc`` remains the fallback when the reaper itself was killed.

The busy loops in guests die with their holder the same way (PR_SET_PDEATHSIG, see
guest/kvmple-spin); this is that guarantee for the guests themselves.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmple import paths
from kvmple.errors import KvmpleError
from kvmple.vm import registry
from kvmple.vm.libvirt_backend import connect

LOG_NAME = "reaper.log"


@dataclass
class _Owner:
    """The owner side: one reaper per process (a forked child starts its own)."""

    pid: int = 0
    fd: int = -1
    reaper_pid: int = 0
    owned: dict[str, str] = field(default_factory=dict)  # domain -> libvirt URI
    state_dirs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


_owner = _Owner()


def _spawn() -> None:
    """Start a reaper for this process (caller holds the lock). posix_spawn, not kvmple.run:
    the reaper must outlive us, in its own session, holding the pipe's read end."""
    if _owner.fd >= 0:
        os.close(_owner.fd)
    read_end, write_end = os.pipe()  # close-on-exec: the write end stays ours alone
    pid = os.getpid()
    argv = [sys.executable, "-m", "kvmple.vm.reaper", str(pid)]
    argv += [str(registry.process_start_time(pid)), str(read_end)]
    quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        os.set_inheritable(read_end, True)
        _owner.reaper_pid = os.posix_spawn(
            sys.executable, argv, dict(os.environ), file_actions=quiet, setsid=True
        )
    finally:
        os.close(read_end)
    _owner.pid, _owner.fd = pid, write_end
    for state_dir in _owner.state_dirs:  # a restarted reaper learns what the last one knew
        _send(f"dir\t{state_dir}")
    for domain, uri in _owner.owned.items():
        _send(f"own\t{uri}\t{domain}")


def _send(line: str) -> None:
    os.write(_owner.fd, (line + "\n").encode())


def _tell(line: str) -> None:
    """Send ``line`` to this process's reaper, starting one first if needed (caller holds
    the lock)."""
    if _owner.pid != os.getpid():
        _spawn()
    try:
        _send(line)
    except OSError:  # the reaper died (killed by hand?): start another one
        _spawn()
        _send(line)


def _this_process() -> None:
    """A forked child owns nothing of its parent's (caller holds the lock)."""
    if _owner.pid != os.getpid():
        _owner.owned.clear()
        _owner.state_dirs.clear()


def ensure() -> None:
    """Start this process's reaper unless it runs, and tell it where this process keeps its
    guest records (``paths.state_dir()``, which tests change per test). Call before claiming
    a guest record."""
    state_dir = str(paths.state_dir())
    with _owner.lock:
        _this_process()
        _owner.state_dirs.add(state_dir)
        _tell(f"dir\t{state_dir}")


def own(domain: str, uri: str) -> None:
    """Announce that this process is about to create ``domain`` in ``uri`` (call after
    checking that no domain of that name exists, so a foreign one is never announced)."""
    with _owner.lock:
        _this_process()
        _owner.owned[domain] = uri
        _tell(f"own\t{uri}\t{domain}")


def disown(domain: str) -> None:
    """``domain`` is gone or detached: the reaper must leave it alone."""
    with _owner.lock:
        _this_process()
        if _owner.owned.pop(domain, None) is not None:
            _tell(f"disown\t{domain}")


# -- the reaper process ------------------------------------------------------------------------


def _log(message: str) -> None:
    """Append to state/vm/reaper.log when that directory still exists (never create it)."""
    override = os.environ.get("KVMPLE_STATE_DIR")
    directory = Path(override) / "vm" if override else registry.vm_dir()
    if not directory.is_dir():
        return
    try:
        with (directory / LOG_NAME).open("a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} reaper {os.getpid()}: {message}\n")
    except OSError:
        pass


@dataclass
class Announced:
    """What the owner announced: domains still owned (domain -> URI), state directories."""

    owned: dict[str, str] = field(default_factory=dict)
    state_dirs: set[str] = field(default_factory=set)


def read_announcements(fd: int) -> Announced:
    """Read the owner's lines until end-of-file (the owner is gone); return what it still
    owns and where it keeps records (reads ``fd`` only)."""
    seen = Announced()
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            words = line.rstrip("\n").split("\t")
            if len(words) == 3 and words[0] == "own":
                seen.owned[words[2]] = words[1]
            elif len(words) == 2 and words[0] == "disown":
                seen.owned.pop(words[1], None)
            elif len(words) == 2 and words[0] == "dir":
                seen.state_dirs.add(words[1])
    return seen


def reap_owner(seen: Announced, owner_pid: int, owner_start: int | None) -> None:
    """Destroy the domains still owned, then forget the dead owner's (non-detached) records
    and their run directories in every state directory it announced."""
    for domain, uri in sorted(seen.owned.items()):
        try:
            with connect(uri) as lv:
                if lv.destroy(domain):
                    _log(f"owner {owner_pid} died: destroyed {domain} ({uri})")
        except KvmpleError as exc:
            _log(f"owner {owner_pid} died: could not destroy {domain}: {exc.message}")
    for state_dir in sorted(seen.state_dirs):
        if not os.path.isdir(os.path.join(state_dir, "vm", "records")):
            continue  # gone (a test's temporary directory): nothing to forget, create nothing
        os.environ["KVMPLE_STATE_DIR"] = state_dir  # registry reads it (paths.state_dir)
        for record in registry.all_records():
            if (
                record.owner_pid == owner_pid
                and record.owner_start == owner_start
                and not record.detached
            ):
                registry.forget(record)
                _log(f"owner {owner_pid} died: forgot {record.domain}")


def main(argv: list[str]) -> int:
    """``python -m kvmple.vm.reaper OWNER_PID OWNER_START FD``."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    owner_pid, owner_start = int(argv[0]), None if argv[1] == "None" else int(argv[1])
    seen = read_announcements(int(argv[2]))
    try:
        reap_owner(seen, owner_pid, owner_start)
    except Exception as exc:  # last resort: gc still finds the records
        _log(f"owner {owner_pid} died: reaping failed: {exc!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The one readiness wait: a guest is ready when SSH answers with its pinned host key, the
installation key logs in and a command runs. Campaign guests (vm/lifecycle.py), image checks
and kernel boot tests (image/probe.py) all wait here, through ``kvmple.remote.SSHExecutor``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvmple.errors import CommandError, GuestError
from kvmple.remote import HostKeyMismatch, LoginRefused, SSHExecutor

_PAUSE = 1.0  # between attempts: a booting guest refuses connections for a while


def wait_ssh(
    executor: SSHExecutor,
    *,
    deadline: float,
    alive: Callable[[], None],
    timed_out: Callable[[str], GuestError],
    stop: threading.Event | None = None,
) -> None:
    """Return once ``executor`` logs in and ``true`` runs in the guest.

    ``deadline``: time.monotonic() value; past it, ``timed_out(last reason)`` is raised.
    ``alive`` is called before every attempt and raises GuestError when the guest died.
    HostKeyMismatch and LoginRefused are raised at once (retrying cannot help);
    KeyboardInterrupt when ``stop`` is set (another guest of the same boot failed).
    """
    stop = stop or threading.Event()
    last = "no attempt yet"
    while not stop.is_set():
        alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise timed_out(last)
        try:
            # generous per-attempt timeouts: TCG guests on a loaded host answer slowly
            executor.connect(timeout=min(30.0, max(remaining, 1.0)))
            executor.run(["true"], timeout=min(30.0, max(remaining, 5.0)))
            return
        except (HostKeyMismatch, LoginRefused):
            raise
        except (GuestError, CommandError) as exc:
            # Not up yet (refused, no banner), or sshd up but the guest too busy to run a
            # command in time (TCG on a loaded host): close and try again until the deadline.
            last = exc.message
            executor.close()
        stop.wait(_PAUSE)
    raise KeyboardInterrupt

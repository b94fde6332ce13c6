"""Helpers shared by the test tiers.

``need(ok, reason)``: a real-tier prerequisite. Outside CI a missing prerequisite skips the
test with the reason; with KVMPLE_REQUIRE_REAL=1 (set by scripts/test, hence CI) it FAILS,
so the real tier can never be skipped silently.

``TimeBudget``: a real test's own deadline below pytest's global timeout, failing with where
the time went (see budget_below_timeout).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest


def require_real() -> bool:
    return os.environ.get("KVMPLE_REQUIRE_REAL") == "1"


def need(ok: bool, reason: str) -> None:
    if ok:
        return
    if require_real():
        pytest.fail(
            f"real-tier prerequisite missing (KVMPLE_REQUIRE_REAL=1): {reason}", pytrace=False
        )
    pytest.skip(reason)


def need_program(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    need(path is not None, f"program {name!r} not installed (run scripts/setup-host.sh --test)")
    assert path is not None
    return path


def need_root() -> None:
    need(os.geteuid() == 0, "must run as root")


class TimeBudget:
    """A real test's own deadline, below pytest's global timeout, that says where the time
    went: the test runs its steps as phases, gives each wait ``remaining()`` seconds, and
    when the budget is spent fails by its own check naming every phase and its duration
    (the running one marked), instead of being killed by pytest-timeout with guests running.

    ``clock`` is injectable for the unit test of this helper.
    """

    def __init__(self, seconds: float, what: str, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.what = what
        self._clock = clock
        self._start = clock()
        self._phases: list[tuple[str, float, float | None]] = []  # name, start, end

    def remaining(self, floor: float = 1.0) -> float:
        """Seconds left (at least ``floor``, so a last wait still gets a chance to report)."""
        return max(floor, self.seconds - (self._clock() - self._start))

    @property
    def spent(self) -> bool:
        return self._clock() - self._start >= self.seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phases.append((name, self._clock(), None))
        index = len(self._phases) - 1
        try:
            yield
        finally:
            self._phases[index] = (name, self._phases[index][1], self._clock())

    def where(self) -> str:
        """Every phase so far with its duration: '1. boot 300 s; 2. resume 900 s (running)'."""
        now = self._clock()
        parts = []
        for number, (name, start, end) in enumerate(self._phases, 1):
            took = (end if end is not None else now) - start
            parts.append(f"{number}. {name} {took:.0f} s" + (" (running)" if end is None else ""))
        return "; ".join(parts) or "no phase started"

    def fail(self, detail: str = "") -> NoReturn:
        pytest.fail(
            f"{self.what}: its {self.seconds:.0f} s budget is spent"
            + (f" ({detail})" if detail else "")
            + f"; the time went: {self.where()}",
            pytrace=False,
        )

    def check(self, detail: str = "") -> None:
        if self.spent:
            self.fail(detail)


def budget_below_timeout(request: pytest.FixtureRequest, margin: float = 240.0) -> float:
    """This test's pytest-timeout (its marker, else the ini value) minus ``margin`` seconds
    for cleaning up, so the test's own budget always runs out first."""
    marker = request.node.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(request.config.getini("timeout") or 0)
    )
    return max(60.0, limit - margin) if limit else 3600.0

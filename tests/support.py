"""Helpers shared by the test tiers.

``need(ok, reason)``: a real-tier prerequisite. Outside CI a missing prerequisite skips the
test with the reason; with KVMPLE_REQUIRE_REAL=1 (set by scripts/test, hence CI) it FAILS,
so the real tier can never be skipped silently.
"""

from __future__ import annotations

import os
import shutil

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

"""Test-suite wide fixtures: isolated kvmple directories for every test."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _kvmple_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Unit tests never write to the user's real cache/state/data dirs.

    Real-tier tests that want the shared image cache opt in with the ``shared_cache`` fixture.
    """
    base = tmp_path_factory.mktemp("kvmple-home")
    for name in ("CACHE", "STATE", "DATA"):
        monkeypatch.setenv(f"KVMPLE_{name}_DIR", str(base / name.lower()))
    # an inherited KVMPLE_KEY_DIR (a shell that exported the shared cache's) would let unit
    # tests rewrite that key: test_key_readable_by_others_is_refused chmods it to 644, which
    # is how the shared key was found at mode 644 twice. The default is under the state dir.
    monkeypatch.delenv("KVMPLE_KEY_DIR", raising=False)
    # the library draws nothing (it emits kvmple.events); this keeps the CLI's progress
    # displays out of the output that real/lab tests run through the CLI and parse
    monkeypatch.setenv("KVMPLE_NO_PROGRESS", "1")
    yield


@pytest.fixture
def shared_cache(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The persistent image cache of this machine (kept between test runs and CI runs)."""
    path = Path("/var/cache/kvmple-tests")
    path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("KVMPLE_CACHE_DIR", str(path))
    # the installation key is baked into cached images: share one with the cache
    monkeypatch.setenv("KVMPLE_KEY_DIR", str(path / "ssh"))
    return path


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt for the test, as in a terminal: a shell starts
    background jobs (e.g. `nohup .ci/run &`) with SIGINT ignored, which Python keeps."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

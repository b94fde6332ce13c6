"""The modern directed-yield series against Debian's linux-source-6.1, for real.

The tree is the shared pristine unpack of /usr/src/linux-source-6.1.tar.xz (the same cache
as test_kernel_real.py). The three upstream series (PV sched yield and the
interrupt-delivery boost from 5.3, the 5.13 directed-yield batch) must be reported "already
upstream" with every content marker found, by upstream detection, by apply and by
``kvmple kernel series show --tree``; the 2025 vCPU-debooster RFC must not be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.kernel.apply import Status, apply_series
from kvmple.kernel.fetch import unpack_tree
from kvmple.kernel.series import load_series
from kvmple.kernel.tree import inspect_tree
from kvmple.kernel.upstream import check_upstream
from tests.support import need, need_program

pytestmark = pytest.mark.real

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SHARED = Path("/var/cache/kvmple-tests")
UPSTREAM = ["pv-sched-yield-v4", "boost-irq-delivery-v3", "directed-yield-5.13"]


@pytest.fixture(scope="module")
def pristine() -> Path:
    need(TARBALL.is_file(), f"{TARBALL} missing (apt-get install linux-source-6.1)")
    need_program("tar")
    SHARED.mkdir(parents=True, exist_ok=True)
    return unpack_tree(TARBALL, SHARED)


@pytest.mark.parametrize("name", UPSTREAM)
def test_modern_series_is_already_upstream_in_61(pristine: Path, name: str) -> None:
    series, folder = load_series(name)
    tree = inspect_tree(pristine)
    assert tree.version[:2] == (6, 1) and not tree.is_git
    presence = check_upstream(series, tree)
    assert all(p.upstream for p in presence)
    # every content marker is really there in Debian's 6.1 (none "MISSING")
    assert not [p.evidence for p in presence if "MISSING" in p.evidence]
    assert all("marker found" in p.evidence for p in presence)
    report = apply_series(series, folder, pristine)
    assert [r.status for r in report.results] == [Status.upstream] * len(series.patches)
    assert report.target is None


def test_series_show_reports_them_in_the_61_tree(
    pristine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in UPSTREAM:
        series, _ = load_series(name)
        assert main(["kernel", "series", "show", name, "--tree", str(pristine)]) == 0
        shown = capsys.readouterr().out
        assert shown.count("IN TREE: tree 6.1.") == len(series.patches), name
        assert "not in tree" not in shown and "MISSING" not in shown


def test_the_debooster_rfc_is_not_upstream_in_61(pristine: Path) -> None:
    series, _ = load_series("vcpu-debooster-v2")
    presence = check_upstream(series, inspect_tree(pristine))
    assert len(presence) == 9 and not any(p.upstream for p in presence)
    assert all("no content marker known" in p.evidence for p in presence)

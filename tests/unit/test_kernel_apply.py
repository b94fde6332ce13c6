"""Applying series with real git, patch and quilt on a tiny fake kernel tree."""

from __future__ import annotations

import json
import mailbox
import os
import re
from pathlib import Path

import pytest

from kvmple.errors import PatchError
from kvmple.kernel.apply import RECORD, Status, apply_series, read_record
from kvmple.kernel.series import Series, load_series
from kvmple.kernel.tree import inspect_tree
from kvmple.kernel.upstream import check_upstream
from kvmple.paths import cache_dir
from kvmple.run import run, which
from tests.unit.kernel_fake_tree import git, make_git_tree, make_series, make_tree, snapshot


def _work_dirs() -> list[Path]:
    base = cache_dir() / "kernel" / "work"
    return sorted(base.iterdir()) if base.exists() else []


# ------------------------------------------------------------------ trees without git


def test_quilt_apply_goes_to_a_copy_and_leaves_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    before = snapshot(tree)
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree)
    assert report.method == "quilt (patch)"
    assert [r.status for r in report.results] == [Status.applied, Status.applied]
    assert report.target is not None and report.target != tree
    assert "yielded++" in (report.target / "kernel/sched/fair.c").read_text()
    assert (report.target / "kernel/yield-notes.txt").read_text() == "notes\n"
    assert snapshot(tree) == before  # hard links were broken, not written through
    record = read_record(report.target)
    assert record is not None and record.series == "fake-series"
    # the build manifest carries apply's record with exactly the keys apply wrote
    assert record.model_dump(mode="json") == json.loads((report.target / RECORD).read_text())
    assert record.results is not None and record.results[0].status == "applied"
    assert (report.target / RECORD).is_file()


@pytest.mark.skipif(which("quilt") is None, reason="quilt not installed")
def test_quilt_can_pop_what_kvmple_applied(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree)
    assert report.target is not None
    applied = run(["quilt", "applied"], timeout=30, cwd=report.target).stdout.split()
    assert applied == ["patches/0001-count-yields.patch", "patches/0002-mark-preempt.patch"]
    run(["quilt", "pop", "-a"], timeout=30, cwd=report.target)
    popped = snapshot(report.target)
    original = snapshot(tree)
    assert {
        k: v for k, v in popped.items() if not k.startswith(("patches/", ".pc/", RECORD))
    } == original


def test_failing_patch_names_patch_file_hunk_and_keeps_nothing(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series", broken=True)
    before = snapshot(tree)
    series, _ = load_series(str(folder))
    with pytest.raises(PatchError) as caught:
        apply_series(series, folder, tree)
    message = caught.value.message
    assert "patch 2 0002-mark-preempt.patch" in message
    assert "file kernel/sched/fair.c, hunk #2" in message
    assert snapshot(tree) == before
    assert _work_dirs() == []


def test_check_mode_reports_every_patch_and_keeps_nothing(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series", broken=True)
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree, check_only=True)
    assert [r.status for r in report.results] == [Status.applied, Status.failed]
    assert "hunk #2" in report.results[1].detail
    assert report.target is None and _work_dirs() == []


def test_already_applied_patches_are_detected_by_popping(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    # the tree already carries patch 1 (like Debian's linux-source carries debian/patches)
    run(["patch", "-p1", "-i", folder / "0001-count-yields.patch"], timeout=30, cwd=tree)
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree)
    assert [r.status for r in report.results] == [Status.already_applied, Status.applied]
    # and a tree that carries the whole series needs nothing: no copy is kept
    assert report.target is not None
    again = apply_series(series, folder, report.target)
    assert [r.status for r in again.results] == [Status.already_applied] * 2
    assert again.target is None


def test_not_a_kernel_tree(tmp_path: Path) -> None:
    series, folder = load_series("kvmple-selftest")
    with pytest.raises(PatchError, match="not a kernel tree"):
        apply_series(series, folder, tmp_path)


def test_into_must_be_new(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    series, _ = load_series(str(folder))
    with pytest.raises(PatchError, match="already exists"):
        apply_series(series, folder, tree, into=tmp_path)
    report = apply_series(series, folder, tree, into=tmp_path / "patched")
    assert report.target == (tmp_path / "patched").resolve()


# ------------------------------------------------------------------------- git trees


def test_git_apply_makes_a_branch_in_a_new_worktree(tmp_path: Path) -> None:
    tree = make_git_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    head = git(tree, "rev-parse", "HEAD").strip()
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree)
    assert report.method == "git am -3"
    assert [r.status for r in report.results] == [Status.applied, Status.applied]
    assert report.branch is not None and report.branch.startswith("kvmple/")
    assert report.target is not None
    log = git(report.target, "log", "--format=%s", "-3").splitlines()
    assert log == ["sched: mark preempt", "sched: count yields", "base"]
    # the user's checkout did not move and is clean
    assert git(tree, "rev-parse", "HEAD").strip() == head
    assert git(tree, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert git(tree, "status", "--porcelain", "--untracked-files=no") == ""


def test_git_failure_removes_branch_and_worktree(tmp_path: Path) -> None:
    tree = make_git_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series", broken=True)
    series, _ = load_series(str(folder))
    with pytest.raises(PatchError) as caught:
        apply_series(series, folder, tree)
    assert "patch 2" in caught.value.message
    assert "kernel/sched/fair.c" in caught.value.message
    assert "hunk #2" in caught.value.message
    assert "kvmple/" not in git(tree, "branch", "--list")
    assert git(tree, "worktree", "list").count("\n") == 1
    assert _work_dirs() == []


def test_dirty_git_tree_is_refused(tmp_path: Path) -> None:
    tree = make_git_tree(tmp_path / "linux")
    folder = make_series(tree, tmp_path / "series")
    (tree / "kernel/sched/core.c").write_text("changed\n")
    series, _ = load_series(str(folder))
    with pytest.raises(PatchError, match=re.escape("uncommitted changes (kernel/sched/core.c)")):
        apply_series(series, folder, tree)


def test_patches_from_an_mbox_of_git_format_patch(tmp_path: Path) -> None:
    donor = make_git_tree(tmp_path / "donor")
    folder = make_series(donor, tmp_path / "series")
    for name in ("0001-count-yields.patch", "0002-mark-preempt.patch"):
        git(donor, "am", "-q", str(folder / name))
    mbox_text = git(donor, "format-patch", "--stdout", "-2")
    (tmp_path / "series.mbox").write_text(mbox_text)
    assert len(mailbox.mbox(tmp_path / "series.mbox")) == 2
    tree = make_tree(tmp_path / "linux")
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree, source=tmp_path / "series.mbox")
    assert [r.status for r in report.results] == [Status.applied, Status.applied]
    assert all(r.origin.startswith("mbox ") for r in report.results)


# -------------------------------------------------------------- already upstream


def _yield_to_history(tree: Path) -> None:
    """Commits with the subjects upstream used (case and prefix differ from the posting)."""
    for subject in [
        "sched: Check the right ->nr_running in yield_task_fair()",
        "sched: Limit the scope of clear_buddies",
        "sched: Use a buddy to implement yield_task_fair()",
        "sched: Add yield_to(task, preempt) functionality",
        "export pid symbols needed for kvm_vcpu_on_spin",
        "KVM: Keep track of which task is running a KVM vcpu",
        "KVM: Use yield_to instead of sleep in kvm_vcpu_on_spin",
    ]:
        git(tree, "commit", "-q", "--allow-empty", "-m", subject)


def test_yield_to_found_upstream_by_subject_in_git(tmp_path: Path) -> None:
    tree = make_git_tree(tmp_path / "linux", (2, 6, 39))
    _yield_to_history(tree)
    series, folder = load_series("yield-to-ple-v7")
    presence = check_upstream(series, inspect_tree(tree))
    assert all(p.upstream for p in presence)
    assert "(by subject)" in presence[6].evidence
    assert "manifest hash 217ece6129f2 (verified) differs" in presence[6].evidence
    report = apply_series(series, folder, tree)
    assert [r.status for r in report.results] == [Status.upstream] * 7
    assert report.target is None and report.branch is None
    assert "kvmple/" not in git(tree, "branch", "--list")


def test_partial_history_is_not_upstream(tmp_path: Path) -> None:
    tree = make_git_tree(tmp_path / "linux", (2, 6, 38))
    git(
        tree,
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "sched: Add yield_to(task, preempt) functionality",
    )
    series, _ = load_series("yield-to-ple-v7")
    presence = check_upstream(series, inspect_tree(tree))
    assert [p.upstream for p in presence] == [False, False, False, True, False, False, False]


def test_release_tarball_decides_by_version_and_reports_markers(tmp_path: Path) -> None:
    series, folder = load_series("yield-to-ple-v7")
    new = make_tree(tmp_path / "linux-6.1", (6, 1, 0))
    presence = check_upstream(series, inspect_tree(new))
    assert all(p.upstream for p in presence)
    assert "tree 6.1.0 >= landed_in v2.6.39" in presence[0].evidence
    assert "marker found: 'if (unlikely(rq->nr_running == 1))'" in presence[0].evidence
    assert "marker MISSING" in presence[6].evidence  # no virt/kvm in the fake tree
    assert "inferred, not proven" in presence[6].evidence
    report = apply_series(series, folder, new)
    assert report.count(Status.upstream) == 7 and report.target is None
    old = make_tree(tmp_path / "linux-2.6.38", (2, 6, 38))
    assert not any(p.upstream for p in check_upstream(series, inspect_tree(old)))


def test_old_tree_without_a_patch_source_says_so(tmp_path: Path) -> None:
    series, folder = load_series("yield-to-ple-v7")
    old = make_tree(tmp_path / "linux-2.6.38", (2, 6, 38))
    with pytest.raises(PatchError, match="no usable patch source") as caught:
        apply_series(series, folder, old)
    assert "--from" in (caught.value.hint or "")
    assert _work_dirs() == []


def test_series_model_is_frozen() -> None:
    series, _ = load_series("yield-to-ple-v7")
    assert isinstance(series, Series)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        series.name = "x"  # type: ignore[misc]
    assert os.sep not in series.name


def test_patches_from_a_git_tree_by_subject(tmp_path: Path) -> None:
    donor = make_git_tree(tmp_path / "donor")
    folder = make_series(donor, tmp_path / "series")
    for name in ("0001-count-yields.patch", "0002-mark-preempt.patch"):
        git(donor, "am", "-q", str(folder / name))
    git(donor, "commit", "-q", "--allow-empty", "-m", "later unrelated work")
    tree = make_tree(tmp_path / "linux")
    series, _ = load_series(str(folder))
    report = apply_series(series, folder, tree, source=donor)
    assert [r.status for r in report.results] == [Status.applied, Status.applied]
    hashes = git(donor, "log", "--format=%H", "-3").split()
    assert report.results[0].origin == f"git {hashes[2]} in {donor} (by subject)"
    with pytest.raises(PatchError, match="not found in"):
        apply_series(series, folder, tree, source=donor, git_range="HEAD~1..HEAD")

"""Series manifests, patch sources and subject matching (no kernel tree needed)."""

from __future__ import annotations

import mailbox
import re
from pathlib import Path

import pytest

from kvmple.errors import ConfigError, PatchError
from kvmple.kernel.series import (
    HashStatus,
    PatchEntry,
    list_series,
    load_series,
    normalise_subject,
    parse_version,
)
from kvmple.kernel.sources import (
    find_by_subject,
    from_format_patch,
    from_mbox,
    from_quilt,
    parse_quilt_series,
    patch_header,
    series_from_quilt_dir,
)


def test_shipped_yield_to_manifest() -> None:
    series, folder = load_series("yield-to-ple-v7")
    assert folder.name == "yield-to-ple-v7"
    assert len(series.patches) == 7
    assert series.landed_in == "v2.6.39"
    verified = [
        i + 1 for i, p in enumerate(series.patches) if p.upstream_status is HashStatus.verified
    ]
    assert verified == [3, 4, 7]
    assert series.patches[3].author == "Mike Galbraith"
    assert series.patches[4].upstream is None  # patch 5: not found upstream, maybe folded
    assert all(p.markers for p in series.patches)
    # no kernel code shipped: the folder holds only the manifest
    assert sorted(p.name for p in folder.iterdir()) == ["series.yaml"]


def test_shipped_series_are_listed() -> None:
    assert {"yield-to-ple-v7", "kvmple-selftest"} <= set(list_series())


def test_selftest_series_is_a_quilt_dir() -> None:
    series, folder = load_series("kvmple-selftest")
    patches = from_quilt(folder)
    assert [p.name for p in patches] == [p.file for p in series.patches]
    assert patches[0].subject == "localversion: mark the release as kvmple-selftest"
    assert patches[1].origin.startswith("quilt ")


@pytest.mark.parametrize(
    ("posted", "upstream"),
    [
        (
            "[RFC -v7 PATCH 7/7] kvm: use yield_to instead of sleep in kvm_vcpu_on_spin",
            "KVM: use yield_to instead of sleep in kvm_vcpu_on_spin",
        ),
        (
            "[PATCH 4/7] sched: Add yield_to(task, preempt) functionality",
            "sched:  add yield_to(task,   preempt) functionality",
        ),
    ],
)
def test_subjects_match_case_insensitively_without_prefix(posted: str, upstream: str) -> None:
    assert normalise_subject(posted) == normalise_subject(upstream)


def test_find_by_subject_prefers_the_oldest_commit() -> None:
    entries = [
        PatchEntry(subject="kvm: use yield_to instead of sleep in kvm_vcpu_on_spin"),
        PatchEntry(subject="not there"),
    ]
    commits = [  # git log order: newest first
        ("c" * 40, "KVM: use yield_to instead of sleep in kvm_vcpu_on_spin"),
        ("b" * 40, "unrelated"),
        ("a" * 40, "KVM: use yield_to instead of sleep in kvm_vcpu_on_spin"),
    ]
    found = find_by_subject(entries, commits)
    assert found == {0: ("a" * 40, commits[2][1])}


def test_parse_version() -> None:
    assert parse_version("v2.6.39") == (2, 6, 39)
    assert parse_version("6.1") == (6, 1, 0)
    assert parse_version("6.1.192") > parse_version("v2.6.39")  # type: ignore[operator]
    assert parse_version("linus") is None


def test_bad_manifest_names_file_line_and_key(tmp_path: Path) -> None:
    (tmp_path / "series.yaml").write_text(
        "name: x\ntitle: y\nlanded_in: soon\npatches:\n  - subject: a\n    colour: red\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_series(str(tmp_path))
    assert "series.yaml:" in caught.value.message
    assert "colour" in caught.value.message or "landed_in" in caught.value.message


def test_unknown_series_lists_known_ones() -> None:
    with pytest.raises(PatchError) as caught:
        load_series("no-such-series")
    assert "unknown series 'no-such-series'" in caught.value.message
    assert caught.value.hint is not None and "yield-to-ple-v7" in caught.value.hint


def test_quilt_series_file_format() -> None:
    text = "# comment\n\na.patch\nsub/b.patch -p0   # trailing comment\n"
    assert parse_quilt_series(text, "series") == [("a.patch", 1), ("sub/b.patch", 0)]
    with pytest.raises(ConfigError, match=r"series:2: unsupported quilt option '-R'"):
        parse_quilt_series("a.patch\nb.patch -R\n", "series")


def test_quilt_dir_with_missing_patch(tmp_path: Path) -> None:
    (tmp_path / "series").write_text("gone.patch\n")
    with pytest.raises(PatchError, match=re.escape("lists gone.patch")):
        from_quilt(tmp_path)


def test_patch_headers() -> None:
    git_style = (
        "From 1234 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: [PATCH 2/3] x: y\n\n"
        "body\n---\ndiff --git a/f b/f\n"
    )
    assert patch_header(git_style) == ("x: y", "A <a@b>")
    dep3 = "Description: fix the frobnicator\nAuthor: B\n---\n--- a/f\n+++ b/f\n"
    assert patch_header(dep3) == ("fix the frobnicator", "B")
    folded = "Subject: [PATCH] a very long\n subject line\n\n--- a/f\n"
    assert patch_header(folded)[0] == "a very long subject line"


def _message(subject: str, diff: bool) -> str:
    body = "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n" if diff else "cover letter text\n"
    return f"From: R <r@x>\nSubject: {subject}\n\nwords\n---\n{body}"


def test_mbox_skips_the_cover_letter(tmp_path: Path) -> None:
    path = tmp_path / "s.mbox"
    box = mailbox.mbox(path)
    box.add(_message("[PATCH 0/2] the cover", diff=False))
    box.add(_message("[PATCH 1/2] first: one", diff=True))
    box.add(_message("[PATCH 2/2] second: two", diff=True))
    box.flush()
    patches = from_mbox(path)
    assert [p.subject for p in patches] == ["first: one", "second: two"]
    assert patches[1].origin == f"mbox {path} message 3"
    assert patches[0].name.startswith("0001-first-one")


def test_format_patch_dir(tmp_path: Path) -> None:
    (tmp_path / "0002-b.patch").write_text(_message("[PATCH 2/2] b", True))
    (tmp_path / "0001-a.patch").write_text(_message("[PATCH 1/2] a", True))
    assert [p.subject for p in from_format_patch(tmp_path)] == ["a", "b"]
    with pytest.raises(PatchError, match=re.escape("no *.patch files")):
        from_format_patch(tmp_path / "missing")


def test_plain_quilt_dir_gets_a_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "debian" / "patches"
    folder.mkdir(parents=True)
    (folder / "a.patch").write_text(_message("fix a", True))
    (folder / "series").write_text("a.patch\n")
    series = series_from_quilt_dir(folder)
    assert series.name == "debian-patches"
    assert series.patches[0].subject == "fix a" and series.patches[0].file == "a.patch"


def test_lore_without_b4_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmple.errors import HostError
    from kvmple.kernel import sources
    from kvmple.kernel.sources import from_lore

    monkeypatch.setattr(sources, "_b4_command", lambda: None)
    with pytest.raises(HostError, match="b4 is not installed") as caught:
        from_lore("20110126234930.23404.44418.stgit@example.org")
    assert "--from" in (caught.value.hint or "")

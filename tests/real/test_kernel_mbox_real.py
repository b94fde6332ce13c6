"""`kernel apply` of real mail inputs with real git am and patch(1) (issue 18, kinds 2-4).

A lore-style thread (cover letters, review replies, a reroll to v2, a quoted-printable
patch, trailers on the patch and on the cover) applied to a small kernel-shaped git tree
and to the same tree without git: the newest revision is what lands, in order, with the
collected trailers in the commit messages. The cases from issue 18 (a quoted-printable mbox,
a format-patch folder with a cover letter) are applied the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmple.cli import main
from kvmple.run import run
from tests.support import need_program
from tests.unit.mail_inputs import BASE, lore_thread

pytestmark = pytest.mark.real

CASES = Path(__file__).resolve().parents[1] / "data" / "cases"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def _tree(path: Path, *, git: bool, file_c: str | None = BASE) -> Path:
    need_program("git")
    need_program("patch")
    shutil.copytree(CASES / "mbox-quoted-printable" / "tree", path)
    if file_c is not None:
        (path / "file.c").write_text(file_c)
    if git:
        run(["git", "init", "-q", path], timeout=60)
        run(["git", "-C", path, "add", "."], timeout=60)
        run(["git", "-C", path, "commit", "-q", "-m", "base"], timeout=60, env=GIT_ENV)
    return path


def test_lore_thread_applies_the_newest_revision_with_git_am(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _tree(tmp_path / "linux", git=True)
    thread = lore_thread(tmp_path / "thread.mbx")
    into = tmp_path / "work"
    assert (
        main(["kernel", "apply", "--tree", str(tree), "--from", str(thread), "--into", str(into)])
        == 0
    )
    out = capsys.readouterr().out
    assert "thread v2: 2 applied (git am -3)" in out
    assert "revision v1; v2 (the newest) is applied" in out
    assert (into / "file.c").read_text() == BASE.replace("b = 2", "b = 33").replace(
        "c = 4", "c = 44"
    )
    log = run(
        ["git", "-C", into, "log", "--format=%s%n%b%x00", "-2", "--reverse"], timeout=60
    ).stdout
    first, second = [c.strip() for c in log.split("\x00") if c.strip()]
    assert first.startswith("demo: change b")
    assert "Reviewed-by: Rev Iewer <rev@example.com>" in first
    assert "Acked-by: Ack Er <ack@example.com>" in first and second.startswith("demo: change c")
    assert (tree / "file.c").read_text() == BASE  # the user's tree untouched


def test_lore_thread_older_revision_on_a_tree_without_git(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _tree(tmp_path / "linux", git=False)
    thread = lore_thread(tmp_path / "thread.mbx")
    into = tmp_path / "work"
    assert (
        main(
            [
                "kernel",
                "apply",
                "--tree",
                str(tree),
                "--from",
                str(thread),
                "--revision",
                "1",
                "--into",
                str(into),
            ]
        )
        == 0
    )
    assert "thread v1: 2 applied (quilt (patch))" in capsys.readouterr().out
    assert (into / "file.c").read_text() == BASE.replace("b = 2", "b = 3").replace("c = 4", "c = 5")


@pytest.mark.parametrize("git", [False, True], ids=["patch", "git-am"])
def test_case_quoted_printable_mbox_applies(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    git: bool,
) -> None:
    """Case mbox-quoted-printable, run from the case folder as the issue did."""
    case = tmp_path / "case"
    shutil.copytree(CASES / "mbox-quoted-printable", case, ignore=shutil.ignore_patterns("tree"))
    _tree(case / "tree", git=git, file_c=None)
    monkeypatch.chdir(case)
    assert (
        main(
            [
                "kernel",
                "apply",
                "--tree",
                "tree",
                "--series",
                "series",
                "--from",
                "patch.mbox",
                "--check",
            ]
        )
        == 0
    )
    assert "qp-demo v1: 1 applied" in capsys.readouterr().out


@pytest.mark.parametrize("git", [False, True], ids=["patch", "git-am"])
def test_case_format_patch_cover_letter_applies(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    git: bool,
) -> None:
    case = tmp_path / "case"
    shutil.copytree(CASES / "format-patch-cover-letter", case)
    if git:
        run(["git", "init", "-q", case / "tree"], timeout=60)
        run(["git", "-C", case / "tree", "add", "."], timeout=60)
        run(["git", "-C", case / "tree", "commit", "-q", "-m", "base"], timeout=60, env=GIT_ENV)
    monkeypatch.chdir(case)
    assert (
        main(
            [
                "kernel",
                "apply",
                "--tree",
                "tree",
                "--series",
                "series",
                "--from",
                "patches",
                "--check",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "fp-demo v1: 2 applied" in out
    assert "0000-cover-letter.patch" in out and "the cover letter" in out

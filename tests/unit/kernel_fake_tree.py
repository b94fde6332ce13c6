"""A tiny fake kernel tree and patch series for the kernel pipeline's unit tests.

The tree has what ``inspect_tree`` looks for (Makefile with VERSION/PATCHLEVEL, Kconfig) and
a few source files; the patches are made with ``diff -u`` from real edits so ``patch`` and
``git am`` see ordinary patches.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kvmple.run import run

MAKEFILE = """# SPDX-License-Identifier: GPL-2.0
VERSION = {v}
PATCHLEVEL = {p}
SUBLEVEL = {s}
EXTRAVERSION =
NAME = Fake Tree

all:
\t@echo fake
"""

FAIR = "\n".join(
    [
        "/* fake kernel/sched/fair.c */",
        "static void yield_task_fair(struct rq *rq)",
        "{",
        "\tif (unlikely(rq->nr_running == 1))",
        "\t\treturn;",
        "}",
        *[f"/* filler line {n} */" for n in range(40)],
        "static void check_preempt(void)",
        "{",
        "\treturn;",
        "}",
        "",
    ]
)

CORE = "/* fake core.c */\nint __sched yield_to(struct task_struct *p, bool preempt)\n{\n}\n"


def make_tree(root: Path, version: tuple[int, int, int] = (6, 1, 0)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Makefile").write_text(MAKEFILE.format(v=version[0], p=version[1], s=version[2]))
    (root / "Kconfig").write_text('mainmenu "Fake"\nsource "init/Kconfig"\n')
    (root / "init").mkdir(exist_ok=True)
    (root / "init" / "Kconfig").write_text("config FAKE_GENERIC\n\tbool\n")
    (root / "arch" / "s390").mkdir(parents=True, exist_ok=True)
    (root / "arch" / "s390" / "Kconfig").write_text("config S390_ONLY\n\tbool\n")
    (root / "kernel" / "sched").mkdir(parents=True, exist_ok=True)
    (root / "kernel" / "sched" / "fair.c").write_text(FAIR)
    (root / "kernel" / "sched" / "core.c").write_text(CORE)
    return root


def _diff(tree: Path, relative: str, new_text: str | None) -> str:
    """A -p1 patch turning tree/relative into new_text (None: create? no: delete)."""
    old = tree / relative
    scratch = tree.parent / ".diff-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "a" / relative).parent.mkdir(parents=True)
    (scratch / "b" / relative).parent.mkdir(parents=True)
    if old.exists():
        shutil.copyfile(old, scratch / "a" / relative)
    if new_text is not None:
        (scratch / "b" / relative).write_text(new_text)
    result = run(
        ["diff", "-uN", f"a/{relative}", f"b/{relative}"], timeout=30, check=False, cwd=scratch
    )
    shutil.rmtree(scratch)
    return result.stdout


def mail(subject: str, body: str) -> str:
    return (
        f"From: Test Author <author@example.org>\nSubject: [PATCH] {subject}\n\n"
        f"Description of {subject}.\n---\n{body}"
    )


def make_series(tree: Path, folder: Path, *, broken: bool = False) -> Path:
    """A quilt series of two patches against ``tree`` (patch 2 broken on request: its
    context no longer matches the tree, in its second hunk)."""
    folder.mkdir(parents=True, exist_ok=True)
    fair = (tree / "kernel/sched/fair.c").read_text()
    one = fair.replace(
        "\t\treturn;\n}\n/* filler line 0", "\t\treturn;\n\tyielded++;\n}\n/* filler line 0"
    )
    first = mail("sched: count yields", _diff(tree, "kernel/sched/fair.c", one))
    (folder / "0001-count-yields.patch").write_text(first)
    # patch 2 applies on top of patch 1: two hunks in fair.c plus a new file
    scratch_tree = tree.parent / ".series-scratch"
    shutil.rmtree(scratch_tree, ignore_errors=True)
    shutil.copytree(tree, scratch_tree)
    (scratch_tree / "kernel/sched/fair.c").write_text(one)
    two = one.replace("/* filler line 1 */", "/* filler line 1 */\nint counter;").replace(
        "\treturn;\n}\n", "\treturn; /* preempt */\n}\n"
    )
    body = _diff(scratch_tree, "kernel/sched/fair.c", two) + _diff(
        scratch_tree, "kernel/yield-notes.txt", "notes\n"
    )
    if broken:
        # a removed line the tree does not have: no fuzz factor can save that hunk
        body = body.replace(
            "-\treturn;\n+\treturn; /* preempt */", "-\treturn 0;\n+\treturn; /* preempt */"
        )
        assert "return 0;" in body
    (folder / "0002-mark-preempt.patch").write_text(mail("sched: mark preempt", body))
    shutil.rmtree(scratch_tree)
    (folder / "series").write_text(
        "# test series\n0001-count-yields.patch\n0002-mark-preempt.patch\n"
    )
    (folder / "series.yaml").write_text(
        "name: fake-series\ntitle: a fake series\nsources:\n  - kind: quilt\n    path: .\n"
        "patches:\n"
        "  - subject: 'sched: count yields'\n    file: 0001-count-yields.patch\n"
        "  - subject: 'sched: mark preempt'\n    file: 0002-mark-preempt.patch\n"
    )
    return folder


def git(tree: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    return run(["git", "-C", tree, *args], timeout=60, env=env).stdout


def make_git_tree(root: Path, version: tuple[int, int, int] = (6, 1, 0)) -> Path:
    make_tree(root, version)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    return root


def snapshot(tree: Path) -> dict[str, bytes]:
    """Every file's content (to prove a tree was left as it was)."""
    return {
        str(p.relative_to(tree)): p.read_bytes()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(tree).parts
    }

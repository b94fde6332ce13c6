"""GNU patch as quilt drives it, plus reading failures into "file, hunk" terms.

quilt-compatible means: the series file's order and -pN, ``patch`` with quilt's semantics
(``--forward``, no backup files, no .rej files), and a ``.pc/`` directory in quilt's own
format for what kvmple applied, so ``quilt pop`` undoes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from kvmple.run import Result, run

APPLIED_REASON = "patch(1) sees it as already applied"


@dataclass(frozen=True)
class Failure:
    file: str
    hunk: int | None
    line: int | None
    reason: str

    def describe(self) -> str:
        where = f"file {self.file}"
        if self.hunk is not None:
            where += f", hunk #{self.hunk}"
        if self.line is not None:
            where += f" (at line {self.line})"
        return f"{where}: {self.reason}"


def run_patch(tree: Path, patch: Path, *, strip: int, reverse: bool, dry_run: bool) -> Result:
    argv: list[str | Path] = [
        "patch",
        f"-p{strip}",
        "--batch",
        "--forward",
        "--no-backup-if-mismatch",
        "--reject-file=-",
        "-i",
        patch,
    ]
    if reverse:
        argv.append("--reverse")
    if dry_run:
        argv.append("--dry-run")
    return run(argv, timeout=300, check=False, cwd=tree, what="patch")


_FILE = re.compile(r"^(?:checking|patching) file '?([^'\n]+?)'?$", re.M)


def touched_files(dry_run_output: str) -> list[str]:
    """Files a (dry) run of patch reported, in order, without duplicates."""
    return list(dict.fromkeys(_FILE.findall(dry_run_output)))


def parse_patch_failure(output: str, strip: int = 1) -> Failure:
    """The first failing file/hunk in GNU patch's output."""
    current = "?"
    for line in output.splitlines():
        match = _FILE.match(line)
        if match:
            current = match.group(1)
            continue
        hunk = re.match(r"Hunk #(\d+) FAILED at (\d+)", line)
        if hunk:
            return Failure(current, int(hunk.group(1)), int(hunk.group(2)), "hunk FAILED")
        if "can't find file to patch" in line:
            wanted = re.search(r"^\|\+\+\+ (\S+)", output, re.M)
            name = "/".join(wanted.group(1).split("/")[strip:]) if wanted else "?"
            return Failure(name, None, None, "file not in tree")
        if "Reversed (or previously applied) patch detected" in line:
            return Failure(current, None, None, APPLIED_REASON)
        if "malformed patch" in line or "Only garbage" in line:
            return Failure(current, None, None, line.strip())
    return Failure(current, None, None, (output.strip().splitlines() or ["patch failed"])[-1])


def hunk_number(patch_text: str, file: str, old_line: int) -> int | None:
    """Which hunk of ``file`` in a patch starts at (or nearest before) ``old_line``."""
    current: str | None = None
    number = 0
    best: int | None = None
    for line in patch_text.splitlines():
        if line.startswith("+++ "):
            name = line[4:].split("\t")[0].strip()
            current = name.split("/", 1)[1] if "/" in name else name
            number = 0
            continue
        match = re.match(r"@@ -(\d+)", line)
        if match and current == file:
            number += 1
            if int(match.group(1)) <= old_line:
                best = number
    return best


def parse_git_am_failure(output: str, patch_text: str) -> Failure:
    """The first failing file/hunk in ``git am -3`` output."""
    failed = re.search(r"error: patch failed: (.+):(\d+)", output)
    if failed:
        file, line = failed.group(1), int(failed.group(2))
        return Failure(file, hunk_number(patch_text, file, line), line, "hunk does not apply")
    conflict = re.search(r"CONFLICT \([^)]*\): Merge conflict in (.+)", output)
    if conflict:
        return Failure(conflict.group(1).strip(), None, None, "3-way merge conflict")
    missing = re.search(r"error: (.+): does not exist in index", output)
    if missing:
        return Failure(missing.group(1), None, None, "file not in tree")
    return Failure("?", None, None, (output.strip().splitlines() or ["git am failed"])[-1])


def write_quilt_state(
    tree: Path, applied: list[tuple[str, int, str, dict[str, bytes | None]]]
) -> None:
    """Record ``applied`` patches the way quilt does, so ``quilt pop -a`` undoes them.

    Each item: (patch name, strip, patch text, {file: content before, None if it was new}).
    Patches go to ``patches/`` with a ``series`` file; backups to ``.pc/<name>/<file>``
    (quilt marks files the patch created with an empty backup).
    """
    patches_dir = tree / "patches"
    pc = tree / ".pc"
    pc.mkdir(exist_ok=True)
    (pc / ".version").write_text("2\n")
    (pc / ".quilt_patches").write_text("patches\n")
    (pc / ".quilt_series").write_text("series\n")
    patches_dir.mkdir(exist_ok=True)
    series_lines: list[str] = []
    applied_lines: list[str] = []
    for name, strip, text, backups in applied:
        (patches_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (patches_dir / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        series_lines.append(name if strip == 1 else f"{name} -p{strip}")
        applied_lines.append(name)
        for file, before in backups.items():
            backup = pc / name / file
            backup.parent.mkdir(parents=True, exist_ok=True)
            backup.write_bytes(before or b"")
        (pc / name / ".timestamp").touch()
    with (patches_dir / "series").open("a") as handle:
        handle.writelines(f"{line}\n" for line in series_lines)
    with (pc / "applied-patches").open("a") as handle:
        handle.writelines(f"{line}\n" for line in applied_lines)

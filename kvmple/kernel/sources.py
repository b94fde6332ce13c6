"""Materialise a series' patches from the user's own source, recording where each came from.

Source kinds: a quilt directory (``series`` file + patches), an mbox file, a folder of
``git format-patch`` files, a kernel git tree (each commit found by subject within a range,
case-insensitively, or by hash, then ``git format-patch``), or a lore message-id through b4
(only when b4 is installed and lore is reachable).
"""

from __future__ import annotations

import email
import email.header
import email.policy
import mailbox
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmple.errors import ConfigError, HostError, PatchError
from kvmple.kernel.series import (
    SUBJECT_PREFIX,
    PatchEntry,
    Series,
    Source,
    SourceKind,
    normalise_subject,
)
from kvmple.run import run, which


@dataclass(frozen=True)
class Patch:
    """One materialised patch: its text and where it came from."""

    index: int
    name: str
    subject: str
    author: str
    text: str
    origin: str
    strip: int = 1


# ---------------------------------------------------------------- parsing patch files


def _decode(value: str | None) -> str:
    if not value:
        return ""
    parts = email.header.decode_header(value)
    text = "".join(
        p.decode(enc or "utf-8", errors="replace") if isinstance(p, bytes) else p
        for p, enc in parts
    )
    return " ".join(text.split())


_BODY_START = re.compile(r"^(---\s*$|diff |Index: |--- )", re.M)


def patch_header(text: str) -> tuple[str, str]:
    """(subject, author) from a patch's header: mail headers (git format-patch / Debian) or
    DEP-3 ``Description:``; falls back to the first non-empty line."""
    head = text[: m.start()] if (m := _BODY_START.search(text)) else text
    if head.startswith("From ") and "\n" in head:
        head = head.split("\n", 1)[1]
    message = email.message_from_string(head, policy=email.policy.compat32)
    subject = _decode(message.get("Subject")) or _decode(message.get("Description"))
    author = _decode(message.get("From")) or _decode(message.get("Author"))
    if not subject:
        subject = next((line.strip() for line in head.splitlines() if line.strip()), "")
    return display_subject(subject), author


def display_subject(subject: str) -> str:
    """The subject without '[PATCH n/m]'-style prefixes, case kept."""
    return SUBJECT_PREFIX.sub("", subject).strip()


def has_diff(text: str) -> bool:
    return bool(re.search(r"^(diff |--- \S)", text, re.M))


def parse_quilt_series(text: str, source: str) -> list[tuple[str, int]]:
    """quilt's series file: one patch per line, '#' comments, optional '-pN'."""
    entries: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        name, *options = line.split()
        strip = 1
        for option in options:
            match = re.fullmatch(r"-p(\d+)", option)
            if not match:
                raise ConfigError(
                    f"{source}:{number}: unsupported quilt option {option!r} for {name}",
                    hint="kvmple understands '-pN' only",
                )
            strip = int(match.group(1))
        entries.append((name, strip))
    return entries


# ---------------------------------------------------------------- source kinds


def from_quilt(folder: Path) -> list[Patch]:
    series_file = folder / "series"
    if not series_file.is_file():
        raise PatchError(f"{folder}: not a quilt directory (no 'series' file)")
    patches: list[Patch] = []
    for index, (name, strip) in enumerate(
        parse_quilt_series(series_file.read_text(encoding="utf-8"), str(series_file)), 1
    ):
        path = folder / name
        if not path.is_file():
            raise PatchError(
                f"{series_file}: lists {name} but {path} does not exist",
                hint="fix the series file or restore the patch",
            )
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        subject, author = patch_header(text)
        patches.append(Patch(index, name, subject, author, text, f"quilt {path}", strip))
    return patches


def _message_patch(index: int, message: email.message.Message, origin: str) -> Patch | None:
    payload = message.as_string()
    if not has_diff(payload):
        return None  # a cover letter or a reply
    subject = display_subject(_decode(message.get("Subject")))
    slug = re.sub(r"[^a-z0-9]+", "-", normalise_subject(subject)).strip("-")[:52]
    return Patch(
        index, f"{index:04d}-{slug}.patch", subject, _decode(message.get("From")), payload, origin
    )


def from_mbox(path: Path) -> list[Patch]:
    if not path.is_file():
        raise PatchError(f"{path}: no such mbox file")
    box = mailbox.mbox(path, create=False)
    patches: list[Patch] = []
    for number, message in enumerate(box, 1):
        patch = _message_patch(len(patches) + 1, message, f"mbox {path} message {number}")
        if patch is not None:
            patches.append(patch)
    if not patches:
        raise PatchError(f"{path}: no patches found in this mbox")
    return patches


def from_format_patch(folder: Path) -> list[Patch]:
    files = sorted(p for p in folder.glob("*.patch") if p.is_file())
    if not files:
        raise PatchError(f"{folder}: no *.patch files")
    patches: list[Patch] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        subject, author = patch_header(text)
        patches.append(Patch(len(patches) + 1, path.name, subject, author, text, f"file {path}"))
    return patches


def git_subjects(tree: Path, revision_range: str | None) -> list[tuple[str, str]]:
    """(hash, subject) of every commit in ``revision_range`` (default: HEAD's history)."""
    result = run(
        ["git", "-C", tree, "log", "--no-merges", "--format=%H%x1f%s", revision_range or "HEAD"],
        timeout=600,
        what="git log (subject search)",
        hint="check the revision range exists in this tree (git tag -l)",
    )
    pairs = [line.split("\x1f", 1) for line in result.stdout.splitlines() if "\x1f" in line]
    return [(h, s) for h, s in pairs]


def find_by_subject(
    entries: list[PatchEntry], commits: list[tuple[str, str]]
) -> dict[int, tuple[str, str]]:
    """Index of each entry -> (hash, upstream subject), matched case-insensitively on the
    normalised subject (posted or upstream). Pure; the oldest match wins (cherry-picks)."""
    wanted: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        for subject in {entry.subject, entry.upstream_subject or entry.subject}:
            wanted.setdefault(normalise_subject(subject), []).append(index)
    found: dict[int, tuple[str, str]] = {}
    for commit, subject in commits:  # newest first: keep overwriting so the oldest wins
        for index in wanted.get(normalise_subject(subject), []):
            found[index] = (commit, subject)
    return found


def resolve_hash(tree: Path, abbreviated: str) -> tuple[str, str] | None:
    """(full hash, subject) of a commit reachable from HEAD, or None."""
    result = run(
        ["git", "-C", tree, "log", "-1", "--format=%H%x1f%s", f"{abbreviated}^{{commit}}", "--"],
        timeout=60,
        check=False,
    )
    if not result.ok or "\x1f" not in result.stdout:
        return None
    full, subject = result.stdout.strip().split("\x1f", 1)
    ancestor = run(
        ["git", "-C", tree, "merge-base", "--is-ancestor", full, "HEAD"], timeout=120, check=False
    )
    return (full, subject) if ancestor.ok else None


def from_git(series: Series, tree: Path, revision_range: str | None) -> list[Patch]:
    commits = git_subjects(tree, revision_range)
    found = find_by_subject(series.patches, commits)
    patches: list[Patch] = []
    for index, entry in enumerate(series.patches):
        how = "by subject"
        hit = found.get(index)
        if hit is None and entry.upstream:
            resolved = resolve_hash(tree, entry.upstream)
            if resolved is not None:
                hit, how = resolved, "by hash"
        if hit is None:
            raise PatchError(
                f"patch {index + 1} {entry.subject!r} not found in {tree}"
                f" ({revision_range or 'HEAD'}) by subject or hash",
                hint="pass a wider --range or another source (--from an mbox or quilt dir)",
            )
        commit, subject = hit
        text = run(
            ["git", "-C", tree, "format-patch", "-1", "--stdout", commit],
            timeout=120,
            what="git format-patch",
        ).stdout
        patches.append(
            Patch(
                index + 1,
                f"{index + 1:04d}-{commit[:12]}.patch",
                subject,
                entry.author,
                text,
                f"git {commit} in {tree} ({how})",
            )
        )
    return patches


def from_lore(message_id: str) -> list[Patch]:
    if which("b4") is None:
        raise HostError(
            "b4 is not installed: cannot fetch the series from lore",
            hint="apt-get install b4, or pass --from with an mbox/quilt dir/git tree",
        )
    with tempfile.TemporaryDirectory(prefix="kvmple-b4-") as tmp:
        run(
            ["b4", "am", "-o", tmp, "-n", "series", message_id],
            timeout=300,
            what="b4 am (lore)",
            hint="lore.kernel.org must be reachable; otherwise pass --from an mbox",
        )
        return from_mbox(Path(tmp) / "series.mbx")


# ---------------------------------------------------------------- choosing a source


def detect(path: Path) -> SourceKind:
    """What kind of patch source a user-given path is."""
    if path.is_dir():
        if (path / "series").is_file():
            return SourceKind.quilt
        if (path / ".git").exists() and (path / "Makefile").is_file():
            return SourceKind.git
        return SourceKind.format_patch
    if path.is_file():
        return SourceKind.mbox
    raise PatchError(f"{path}: no such patch source")


def materialise(
    series: Series,
    folder: Path,
    *,
    override: Path | None = None,
    git_tree: Path | None = None,
    git_range: str | None = None,
) -> list[Patch]:
    """The series' patches, from ``override`` if given, else the manifest's first usable
    source (a git source uses ``git_tree``, the tree the user is applying to)."""
    if override is not None:
        kind = detect(override)
        source = Source(kind=kind, path=str(override), range=git_range)
        return _load(series, source, folder, git_tree=override if kind is SourceKind.git else None)
    problems: list[str] = []
    for source in series.sources:
        try:
            return _load(series, source, folder, git_tree=git_tree, git_range=git_range)
        except (PatchError, HostError) as exc:
            problems.append(f"{source.kind.value}: {exc.message}")
    raise PatchError(
        f"series {series.name}: no usable patch source"
        + (f" ({'; '.join(problems)})" if problems else " (the manifest lists none)"),
        hint="pass --from PATH: a quilt dir, an mbox, format-patch files, or a kernel git tree",
    )


def _load(
    series: Series,
    source: Source,
    folder: Path,
    *,
    git_tree: Path | None,
    git_range: str | None = None,
) -> list[Patch]:
    path = (folder / source.path) if source.path else folder
    if source.kind is SourceKind.quilt:
        return from_quilt(path)
    if source.kind is SourceKind.mbox:
        return from_mbox(path)
    if source.kind is SourceKind.format_patch:
        return from_format_patch(path)
    if source.kind is SourceKind.git:
        if git_tree is None:
            raise PatchError("a git source needs a kernel git tree (--from TREE)")
        return from_git(series, git_tree, git_range or source.range)
    if not source.message_id:
        raise PatchError("a lore source needs message_id")
    return from_lore(source.message_id)


def series_from_quilt_dir(folder: Path) -> Series:
    """A manifest for a plain quilt directory that has none (e.g. Debian's debian/patches)."""
    patches = from_quilt(folder)
    return Series(
        name="-".join(folder.resolve().parts[-2:]),
        title=f"quilt series in {folder}",
        sources=[Source(kind=SourceKind.quilt, path=".")],
        patches=[
            PatchEntry(subject=p.subject or p.name, author=p.author, file=p.name) for p in patches
        ],
    )

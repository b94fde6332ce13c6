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
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kvmple.errors import ConfigError, HostError, PatchError
from kvmple.kernel import mailseries
from kvmple.kernel.inputs import InputKind, detect_input
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
    trailers: tuple[str, ...] = ()  # collected from replies (mail sources)


@dataclass
class Materialised:
    """A source's patches plus what was left out of it and why (mail sources)."""

    patches: list[Patch]
    dropped: list[str] = field(default_factory=list)
    revision: int | None = None  # mail sources: the revision taken
    revisions: tuple[int, ...] = ()  # mail sources: every revision found
    cover: str | None = None  # mail sources: the cover letter's subject, prefix stripped


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
        text = mailseries.decode_patch_file(path.read_bytes())
        subject, author = patch_header(text)
        patches.append(Patch(index, name, subject, author, text, f"quilt {path}", strip))
    return patches


def _from_mails(mails: list[mailseries.Mail], revision: int | None) -> Materialised:
    chosen = mailseries.select_series(mails, revision)
    patches: list[Patch] = []
    for index, mail in enumerate(chosen.patches, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", normalise_subject(mail.subject)).strip("-")[:52]
        patches.append(
            Patch(
                index,
                f"{index:04d}-{slug}.patch",
                display_subject(mail.subject),
                mail.author,
                mail.text,
                mail.origin,
                trailers=mail.trailers,
            )
        )
    dropped = [d.describe() for d in chosen.dropped]
    cover = display_subject(chosen.cover) if chosen.cover else None
    return Materialised(patches, dropped, chosen.revision, chosen.revisions, cover)


def load_mbox(path: Path, revision: int | None = None) -> Materialised:
    """An mbox (lore thread, ``git format-patch --stdout``, b4 output), decoded; one
    revision of the series it carries (see kvmple.kernel.mailseries)."""
    if not path.is_file():
        raise PatchError(f"{path}: no such mbox file")
    try:
        return _from_mails(mailseries.read_mbox(path), revision)
    except PatchError as exc:
        raise PatchError(f"{path}: {exc.message}", hint=exc.hint) from None


def from_mbox(path: Path, revision: int | None = None) -> list[Patch]:
    return load_mbox(path, revision).patches


def load_format_patch(folder: Path, revision: int | None = None) -> Materialised:
    """A folder of ``git format-patch`` files: the same rules as an mbox (cover letter
    0000-cover-letter.patch and diff-less files dropped, ordered by m, one revision)."""
    files = sorted(p for p in folder.glob("*.patch") if p.is_file())
    if not files:
        raise PatchError(f"{folder}: no *.patch files")
    try:
        return _from_mails(mailseries.read_files(files), revision)
    except PatchError as exc:
        raise PatchError(f"{folder}: {exc.message}", hint=exc.hint) from None


def from_format_patch(folder: Path, revision: int | None = None) -> list[Patch]:
    return load_format_patch(folder, revision).patches


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


def _b4_command() -> str | None:
    """b4's command: on PATH, or next to this Python (b4 is a dependency of kvmple)."""
    beside = Path(sys.executable).parent / "b4"
    return which("b4") or (str(beside) if beside.is_file() else None)


def from_lore(message_id: str, revision: int | None = None) -> Materialised:
    b4_command = _b4_command()
    if b4_command is None:
        raise HostError(
            "b4 is not installed: cannot fetch the series from lore",
            hint="pip install b4 (a kvmple dependency), or pass --from an mbox/quilt dir",
        )
    wanted = ["-v", str(revision)] if revision is not None else []
    with tempfile.TemporaryDirectory(prefix="kvmple-b4-") as tmp:
        run(
            [b4_command, "am", "-o", tmp, "-n", "series", *wanted, message_id],
            timeout=300,
            what="b4 am (lore)",
            hint="lore.kernel.org must be reachable; otherwise pass --from an mbox",
        )
        return load_mbox(Path(tmp) / "series.mbx", revision)


# ---------------------------------------------------------------- choosing a source


_SOURCE_OF = {
    InputKind.mbox: SourceKind.mbox,
    InputKind.diff: SourceKind.diff,
    InputKind.quilt: SourceKind.quilt,
    InputKind.format_patch: SourceKind.format_patch,
    InputKind.git: SourceKind.git,
}


def detect(path: Path) -> SourceKind:
    """What kind of patch source a user-given path is (kvmple.kernel.inputs decides)."""
    found = detect_input(path)
    kind = _SOURCE_OF.get(found.kind)
    if kind is None:
        raise PatchError(
            f"{found.path}: a series manifest, not patches",
            hint="pass the manifest with --series and the patches with --from",
        )
    return kind


def from_diff(path: Path) -> list[Patch]:
    """One plain patch file (a diff, maybe with a DEP-3 or mail-like header)."""
    text = mailseries.decode_patch_file(path.read_bytes())
    subject, author = patch_header(text)
    return [Patch(1, path.name, subject or path.stem, author, text, f"file {path}")]


def materialise(
    series: Series,
    folder: Path,
    *,
    override: Path | None = None,
    git_tree: Path | None = None,
    git_range: str | None = None,
    revision: int | None = None,
) -> Materialised:
    """The series' patches, from ``override`` if given (relative: to the current
    directory), else the manifest's first usable source (a git source uses ``git_tree``,
    the tree the user is applying to); ``revision`` picks a mail source's revision."""
    if override is not None:
        override = override.resolve()
        kind = detect(override)
        source = Source(kind=kind, path=str(override), range=git_range)
        git = override if kind is SourceKind.git else None
        return _load(series, source, folder, git_tree=git, revision=revision)
    problems: list[str] = []
    for source in series.sources:
        try:
            return _load(
                series, source, folder, git_tree=git_tree, git_range=git_range, revision=revision
            )
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
    revision: int | None = None,
) -> Materialised:
    path = (folder / source.path) if source.path else folder
    if source.kind is SourceKind.quilt:
        return Materialised(from_quilt(path))
    if source.kind is SourceKind.mbox:
        return load_mbox(path, revision)
    if source.kind is SourceKind.diff:
        return Materialised(from_diff(path))
    if source.kind is SourceKind.format_patch:
        return load_format_patch(path, revision)
    if source.kind is SourceKind.git:
        if git_tree is None:
            raise PatchError("a git source needs a kernel git tree (--from TREE)")
        return Materialised(from_git(series, git_tree, git_range or source.range))
    if not source.message_id:
        raise PatchError("a lore source needs message_id")
    return from_lore(source.message_id, revision)


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

"""Which mails (or ``git format-patch`` files) make a patch series, decoded.

Mail is decoded with the standard library's ``email`` package (Content-Transfer-Encoding
quoted-printable/base64, charsets, MIME parts) before anything looks for a diff, so an
encoded patch is neither dropped nor handed to patch(1) encoded. Which mails form the series
is b4's job (the kernel community's tool, used here as a library: ``b4.LoreMailbox``): it
parses ``[PATCH vN m/n]`` with RFC/RESEND/subsystem prefixes, groups revisions, orders by
m, sets cover letters and replies aside and collects follow-up trailers. kvmple keeps one
revision (the newest unless asked), refuses an incomplete one, and says what it dropped and
why. The only third-party import of b4 in kvmple is here.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import logging
import mailbox
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import b4

from kvmple.errors import PatchError

# b4 logs its own progress ("duplicate messages found ...") at INFO/WARNING; kvmple reports
# what it dropped itself.
logging.getLogger("b4").setLevel(logging.ERROR)
b4.can_network = False  # never ask lore/patchwork for more trailers: the input is the input

# Trailers kvmple carries from replies into the commit message (b4's follow-up trailers).
_DASH_REVISION = re.compile(r"(\[[^\]]*?)\s-v(\d+)\b", re.I)  # "[PATCH -v7 1/3]" (2010s LKML)


@dataclass(frozen=True)
class MailPatch:
    """One patch of the chosen revision, decoded and ready for git am / patch(1)."""

    counter: int
    expected: int
    subject: str  # without the [PATCH ...] prefix
    author: str
    text: str  # mail headers + decoded body (trailers from replies added)
    origin: str
    trailers: tuple[str, ...] = ()  # collected from replies, "Reviewed-by: A <a@b>"


@dataclass(frozen=True)
class Dropped:
    """A mail or file that is not part of the series, and why."""

    what: str
    why: str

    def describe(self) -> str:
        return f"{self.what}: {self.why}"


@dataclass
class MailSeries:
    revision: int
    revisions: tuple[int, ...]
    patches: list[MailPatch] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    cover: str | None = None  # the cover letter's subject


@dataclass(frozen=True)
class Mail:
    """One message and where it came from ("mbox X message 3", "file Y")."""

    message: email.message.EmailMessage
    origin: str


def parse_mail(data: bytes, origin: str) -> Mail:
    """One message from its bytes (a leading mbox ``From `` line is skipped)."""
    if data.startswith(b"From ") and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    message = email.message_from_bytes(data, policy=b4.emlpolicy)
    assert isinstance(message, email.message.EmailMessage)
    return Mail(message, origin)


_ENCODED = re.compile(
    rb"^(content-transfer-encoding:[ \t]*(quoted-printable|base64)|content-type:[ \t]*multipart/)",
    re.I | re.M,
)


def decode_patch_file(raw: bytes) -> str:
    """A patch file's text for patch(1): a file that is a mail with an encoded body or MIME
    parts (a saved mail in a quilt series) is decoded; anything else is returned as it is."""
    head = raw.split(b"\n\n", 1)[0]
    if not _ENCODED.search(head):
        return raw.decode("utf-8", errors="surrogateescape")
    message = parse_mail(raw, "").message
    body, _ = b4.LoreMessage.get_payload(message)
    headers = "".join(
        f"{name}: {b4.LoreMessage.clean_header(str(message[name]))}\n"
        for name in ("From", "Date", "Subject")
        if message[name]
    )
    return headers + "\n" + body


def read_mbox(path: Path) -> list[Mail]:
    """Every message of an mbox file, decoded by the ``email`` package."""
    box = mailbox.mbox(path, create=False)
    mails: list[Mail] = []
    try:
        for number, key in enumerate(box.keys(), 1):
            mails.append(parse_mail(box.get_bytes(key), f"mbox {path} message {number}"))
    finally:
        box.close()
    return mails


def read_files(paths: Iterable[Path]) -> list[Mail]:
    """``git format-patch`` files, one message each, in the order given."""
    return [parse_mail(p.read_bytes(), f"file {p}") for p in paths]


def _prepare(mails: list[Mail]) -> list[b4.LoreMessage]:
    """b4 messages; a Message-Id is made up where format-patch wrote none (b4 needs one)."""
    prepared: list[b4.LoreMessage] = []
    for number, mail in enumerate(mails, 1):
        message = mail.message
        if not b4.LoreMessage.get_clean_msgid(message):
            message["Message-Id"] = f"<kvmple-input-{number}@localhost>"
        subject = str(message.get("Subject", ""))
        if _DASH_REVISION.search(subject):
            del message["Subject"]
            message["Subject"] = _DASH_REVISION.sub(r"\1 v\2", subject)
        prepared.append(b4.LoreMessage(message))
    return prepared


def select_series(mails: list[Mail], revision: int | None = None) -> MailSeries:
    """The series the mails carry: one revision (newest unless ``revision``), in m order.

    Raises PatchError when no mail has a diff, the asked revision is absent, or the chosen
    revision lacks a patch (m/n missing).
    """
    if not mails:
        raise PatchError("no mails or patch files in the input")
    origins = {id(m.message): m.origin for m in mails}
    lmsgs = _prepare(mails)
    with_diff = [lm for lm in lmsgs if lm.has_diff and not lm.reply]
    if not with_diff:
        raise PatchError(
            f"{len(mails)} mail(s), none with a diff",
            hint="is it a cover letter or a discussion thread? pass the patch mails too",
        )
    if all(lm.counters_inferred for lm in with_diff):
        return _unnumbered(lmsgs, origins, revision)
    lmsgs, resent = _newest_copies(lmsgs, origins)
    box = b4.LoreMailbox()
    for lm in lmsgs:
        box.add_message(lm.msg)
    revisions = tuple(sorted(box.series))
    chosen = revision if revision is not None else box.get_latest_revision()
    if chosen is None or chosen not in box.series:
        raise PatchError(
            f"no revision v{revision} in the input",
            hint=f"revisions found: {', '.join(f'v{r}' for r in revisions)}",
        )
    series = box.get_series(chosen, codereview_trailers=False)
    if series is None:
        raise PatchError(f"revision v{chosen}: all patches missing")
    result = _assemble(box, series, revisions, origins)
    result.dropped.extend(resent)
    return result


def _newest_copies(
    lmsgs: list[b4.LoreMessage], origins: dict[int, str]
) -> tuple[list[b4.LoreMessage], list[Dropped]]:
    """One mail per [PATCH vN m/n]: a RESEND (or a second copy) replaces the earlier one.
    b4 would take a second m/n of one revision for an additional patch."""
    newest: dict[tuple[int, int, int], b4.LoreMessage] = {}
    for lm in lmsgs:
        if lm.has_diff and not lm.reply and not lm.counters_inferred:
            key = (lm.revision, lm.counter, lm.expected)
            if key not in newest or lm.date >= newest[key].date:
                newest[key] = lm
    keep = {id(lm) for lm in newest.values()}
    kept, dropped = [], []
    for lm in lmsgs:
        if lm.has_diff and not lm.reply and not lm.counters_inferred and id(lm) not in keep:
            later = newest[(lm.revision, lm.counter, lm.expected)]
            what = f"{origins.get(id(lm.msg), '?')} {lm.full_subject!r}"
            why = f"an earlier copy of v{lm.revision} {lm.counter}/{lm.expected}; "
            dropped.append(Dropped(what, why + f"{later.full_subject!r} is newer"))
        else:
            kept.append(lm)
    return kept, dropped


def _assemble(
    box: b4.LoreMailbox,
    series: b4.LoreSeries,
    revisions: tuple[int, ...],
    origins: dict[int, str],
) -> MailSeries:
    chosen = series.revision
    missing = [n for n, lm in enumerate(series.patches) if n > 0 and lm is None]
    if missing:
        raise PatchError(
            f"revision v{chosen} is incomplete: patch(es) "
            + ", ".join(f"{n}/{series.expected}" for n in missing)
            + " missing",
            hint="add the missing mails, or pick another revision with --revision N "
            f"(found: {', '.join(f'v{r}' for r in revisions)})",
        )
    result = MailSeries(revision=chosen, revisions=revisions)
    cover = series.patches[0]
    cover_trailers = list(cover.followup_trailers) if cover is not None else []
    if cover is not None:
        result.cover = cover.full_subject
    used: set[str] = set()
    for lm in series.patches[1:]:
        assert lm is not None
        used.add(lm.msgid)
        result.patches.append(_patch(lm, cover_trailers, origins))
    newest = " (the newest)" if chosen == max(revisions) else ""
    for lm in box.msgid_map.values():
        if lm.msgid in used:
            continue
        what = f"{origins.get(id(lm.msg), '?')} {lm.full_subject!r}"
        result.dropped.append(Dropped(what, _why_dropped(lm, chosen, newest)))
    return result


def _why_dropped(lm: b4.LoreMessage, chosen: int, newest: str) -> str:
    if lm.reply and lm.has_diff:
        return "a reply carrying a diff (a suggestion in the discussion, not a patch of the series)"
    if lm.reply or (lm.in_reply_to and not lm.has_diff):
        trailers = ", ".join(t.as_string() for t in lm.trailers)
        return "a reply without a diff" + (f" (trailers collected: {trailers})" if trailers else "")
    if lm.has_diff and lm.revision != chosen:
        return f"revision v{lm.revision}; v{chosen}{newest} is applied"
    if lm.counter == 0 and not lm.has_diff:
        return f"the cover letter of v{lm.revision} (0/n, no diff)"
    if not lm.has_diff:
        return "no diff"
    return "a second copy of a patch already taken"


def _unnumbered(
    lmsgs: list[b4.LoreMessage], origins: dict[int, str], revision: int | None
) -> MailSeries:
    """Patches without m/n (``[PATCH]`` or format-patch -N): kept in the order given,
    grouped by revision (b4 would take a same-author resend as a new revision)."""
    revisions = tuple(sorted({lm.revision for lm in lmsgs if lm.has_diff and not lm.reply}))
    chosen = revision if revision is not None else max(revisions)
    if chosen not in revisions:
        raise PatchError(
            f"no revision v{chosen} in the input",
            hint=f"revisions found: {', '.join(f'v{r}' for r in revisions)}",
        )
    result = MailSeries(revision=chosen, revisions=revisions)
    newest = " (the newest)" if chosen == max(revisions) else ""
    for lm in lmsgs:
        if lm.has_diff and not lm.reply and lm.revision == chosen:
            result.patches.append(_patch(lm, [], origins))
            continue
        what = f"{origins.get(id(lm.msg), '?')} {lm.full_subject!r}"
        result.dropped.append(Dropped(what, _why_dropped(lm, chosen, newest)))
    total = len(result.patches)
    result.patches = [
        MailPatch(n, total, p.subject, p.author, p.text, p.origin, p.trailers)
        for n, p in enumerate(result.patches, 1)
    ]
    return result


def _patch(lm: b4.LoreMessage, extra: list[b4.LoreTrailer], origins: dict[int, str]) -> MailPatch:
    trailers: list[str] = []
    for trailer in [*lm.followup_trailers, *extra]:
        line = trailer.as_string(omit_extinfo=True)
        if line not in trailers and line not in lm.body:
            trailers.append(line)
    author = f"{lm.fromname} <{lm.fromemail}>" if lm.fromemail else lm.fromname
    return MailPatch(
        counter=lm.counter,
        expected=lm.expected,
        subject=lm.subject,
        author=author,
        text=_mail_text(lm, trailers),
        origin=origins.get(id(lm.msg), "?"),
        trailers=tuple(trailers),
    )


def _mail_text(lm: b4.LoreMessage, trailers: list[str]) -> str:
    """A plain 8-bit mail git am and patch(1) both read: headers, then the decoded body
    with the collected trailers after the commit message's own."""
    body = lm.body.replace("\r\n", "\n")
    if trailers:
        cut = re.search(r"^---\s*$", body, re.M) or re.search(r"^diff ", body, re.M)
        at = cut.start() if cut else len(body)
        message = body[:at].rstrip("\n")
        body = message + "\n" + "\n".join(trailers) + "\n" + body[at:]
    date = b4.LoreMessage.clean_header(lm.msg.get("Date")) or "Thu, 1 Jan 1970 00:00:00 +0000"
    author = b4.LoreMessage.clean_header(lm.msg.get("From")) or "unknown <unknown@localhost>"
    return (
        f"From: {author}\nDate: {date}\nSubject: [PATCH] {lm.subject}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n" + body
    )

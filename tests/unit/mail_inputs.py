"""Builders for lore-style mail inputs (shared by the mail/series tests)."""

from __future__ import annotations

import base64
import mailbox
import quopri
from pathlib import Path

# file.c of the test trees: b and c are far enough apart for two independent 3-line hunks
BASE = (
    "int a = 1;\nint b = 2;\n/* 1 */\n/* 2 */\n/* 3 */\n/* 4 */\n/* 5 */\n/* 6 */\n"
    "int c = 4;\nint d = 5;\n"
)


def diff(old: str, new: str, path: str = "file.c") -> str:
    """A unified diff (3 lines of context) replacing line ``old`` by ``new`` in BASE."""
    lines = BASE.splitlines()
    at = lines.index(old)
    first, last = max(0, at - 3), min(len(lines), at + 4)
    body = "".join(f"-{old}\n+{new}\n" if n == at else f" {lines[n]}\n" for n in range(first, last))
    size = last - first
    return (
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -{first + 1},{size} +{first + 1},{size} @@\n{body}"
    )


def mail(
    subject: str,
    body: str,
    *,
    msgid: str,
    reply_to: str | None = None,
    author: str = "A U Thor <author@example.com>",
    date: str = "Mon, 15 Aug 2005 20:18:25 +0200",
    cte: str = "8bit",
    charset: str = "utf-8",
) -> bytes:
    """One mail as bytes, its body encoded with ``cte`` (8bit, quoted-printable, base64)."""
    raw = body.encode(charset)
    if cte == "quoted-printable":
        payload = quopri.encodestring(raw)
    elif cte == "base64":
        payload = base64.encodebytes(raw)
    else:
        payload = raw
    headers = [
        f"From: {author}",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{msgid}>",
        "MIME-Version: 1.0",
        f"Content-Type: text/plain; charset={charset}",
        f"Content-Transfer-Encoding: {cte}",
    ]
    if reply_to:
        headers += [f"In-Reply-To: <{reply_to}>", f"References: <{reply_to}>"]
    return ("\n".join(headers) + "\n\n").encode() + payload


def patch_body(message: str, old: str, new: str) -> str:
    return f"{message}\n\nSigned-off-by: A U Thor <author@example.com>\n---\n{diff(old, new)}"


def write_mbox(path: Path, mails: list[bytes]) -> Path:
    box = mailbox.mbox(path)
    for data in mails:
        box.add(data)
    box.flush()
    box.close()
    return path


def lore_thread(path: Path) -> Path:
    """A lore-style thread: v1 (cover + 2 patches, a review asking for changes), then v2
    (cover + 2 patches) with a Reviewed-by on v2 1/2, an Acked-by on the v2 cover, and a
    diff-less reply; mails out of order as a mailing-list archive gives them."""
    v1 = "Mon, 1 Aug 2005 10:00:00 +0000"
    v2 = "Mon, 8 Aug 2005 10:00:00 +0000"
    later = "Tue, 9 Aug 2005 10:00:00 +0000"
    return write_mbox(
        path,
        [
            mail(
                "[PATCH v2 2/2] demo: change c",
                patch_body("Change c.", "int c = 4;", "int c = 44;"),
                msgid="v2-2@x",
                reply_to="v2-0@x",
                date=v2,
            ),
            mail(
                "[PATCH 0/2] demo: two changes",
                "Two changes.\n\n file.c | 4 ++--\n",
                msgid="v1-0@x",
                date=v1,
            ),
            mail(
                "[PATCH 1/2] demo: change b",
                patch_body("Change b.", "int b = 2;", "int b = 3;"),
                msgid="v1-1@x",
                reply_to="v1-0@x",
                date=v1,
            ),
            mail(
                "[PATCH 2/2] demo: change c",
                patch_body("Change c.", "int c = 4;", "int c = 5;"),
                msgid="v1-2@x",
                reply_to="v1-0@x",
                date=v1,
            ),
            mail(
                "Re: [PATCH 1/2] demo: change b",
                "> Change b.\n\nPlease use 33.\n",
                msgid="r1@x",
                reply_to="v1-1@x",
                author="R <r@example.com>",
                date=v1,
            ),
            mail(
                "[PATCH v2 0/2] demo: two changes",
                "v2: 33 and 44.\n\n file.c | 4 ++--\n",
                msgid="v2-0@x",
                date=v2,
            ),
            mail(
                "[PATCH v2 1/2] demo: change b",
                patch_body("Change b.", "int b = 2;", "int b = 33;"),
                msgid="v2-1@x",
                reply_to="v2-0@x",
                date=v2,
                cte="quoted-printable",
            ),
            mail(
                "Re: [PATCH v2 1/2] demo: change b",
                "> Change b.\n\nReviewed-by: Rev Iewer <rev@example.com>\n",
                msgid="r2@x",
                reply_to="v2-1@x",
                author="Rev Iewer <rev@example.com>",
                date=later,
            ),
            mail(
                "Re: [PATCH v2 0/2] demo: two changes",
                "Acked-by: Ack Er <ack@example.com>\n",
                msgid="r3@x",
                reply_to="v2-0@x",
                author="Ack Er <ack@example.com>",
                date=later,
            ),
            mail(
                "Re: [PATCH v2 2/2] demo: change c",
                "Thanks, looks fine.\n",
                msgid="r4@x",
                reply_to="v2-2@x",
                author="R <r@example.com>",
                date=later,
            ),
        ],
    )

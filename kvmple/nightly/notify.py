"""Deliver the night's outcome: files (written atomically) and an optional e-mail handed to
the host's sendmail program (``sendmail -t -oi``; kvmple never speaks SMTP itself)."""

from __future__ import annotations

import os
from email.message import EmailMessage
from pathlib import Path

from kvmple import fsutil
from kvmple.errors import ConfigError, StoreError
from kvmple.nightly.config import Email
from kvmple.run import run


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (world-readable); errors name the file."""
    try:
        return fsutil.write_atomic(path, text)
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror}", hint="check the notify paths in the config"
        ) from exc


def compose(email: Email, subject: str, body: str, attachment: tuple[str, str] | None) -> str:
    """The RFC 5322 message (pure): plain-text summary, optional text attachment."""
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = ", ".join(email.to)
    message["Subject"] = f"{email.subject_prefix} {subject}".strip()
    message.set_content(body)
    if attachment is not None:
        name, text = attachment
        message.add_attachment(text.encode(), maintype="application", subtype="xml", filename=name)
    return message.as_string()


def send(email: Email, message: str, timeout: float = 120.0) -> None:
    """Hand ``message`` to the configured sendmail program (recipients from the headers)."""
    program = email.sendmail
    if not program.is_file() or not os.access(program, os.X_OK):
        raise ConfigError(
            f"notify.email.sendmail: {program} is not an executable program",
            hint="install a sendmail (e.g. apt-get install msmtp-mta) or fix the path",
        )
    run([program, "-t", "-oi"], input=message, timeout=timeout, what="sendmail")

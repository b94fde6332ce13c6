"""Deliver the night's outcome: files (written atomically) and an optional e-mail handed to
the host's sendmail program (``sendmail -t -oi``; kvmple never speaks SMTP itself)."""

from __future__ import annotations

import os
import tempfile
from email.message import EmailMessage
from pathlib import Path

from kvmple.errors import ConfigError, StoreError
from kvmple.nightly.config import Email
from kvmple.run import run


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename (world-readable)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror}", hint="check the notify paths in the config"
        ) from exc
    return path


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

"""Versioned JSON records that one stage writes and the next reads (build manifest, boot pass):
frozen pydantic models, validated when read, with one error line naming file and key.

pyperf keeps its results as versioned records; kvmple does the same for what crosses a stage
boundary on disk. A record carries ``schema_version``; a file without one is version 1 (what
kvmple wrote before the field existed). A record from a newer kvmple is refused, not guessed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from kvmple.errors import InputError


def first_error(exc: ValidationError, top: str = "(top level)") -> tuple[str, str]:
    """(dotted key, message) of pydantic's first error: what one clear line names; ``top``
    when the error is about the whole document."""
    first = exc.errors()[0]
    return ".".join(str(part) for part in first["loc"]) or top, first["msg"]


R = TypeVar("R", bound="JsonRecord")


class JsonRecord(BaseModel):
    """Base of kvmple's JSON records: frozen; unknown keys are ignored (a newer kvmple may
    add some within the same schema version)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    SCHEMA_VERSION: ClassVar[int] = 1  # overridden per record: the version this kvmple writes
    schema_version: int = 1

    def to_json(self) -> str:
        """The record as indented JSON text (paths as strings), ending in a newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def to_json_line(self) -> str:
        """The record as one line of compact JSON (for JSON Lines streams), with a newline."""
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":")) + "\n"

    def write(self, path: Path) -> Path:
        """Write the record to ``path`` atomically (temporary name, then rename)."""
        temp = path.with_name(f"{path.name}.tmp")
        try:
            temp.write_text(self.to_json(), encoding="utf-8")
            os.replace(temp, path)
        except BaseException:  # a full disk or Ctrl-C leaves no half-written file behind
            temp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_json(cls: type[R], text: str, source: str, hint: str | None = None) -> R:
        """Parse and validate JSON ``text`` (from ``source``, named in messages).

        InputError (exit 3), one line naming ``source`` and the key, when the text is not
        JSON, not an object, of a newer schema version, or a key is missing or mistyped."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{source}: not valid JSON ({exc})", hint=hint) from exc
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object at the top level", hint=hint)
        version = data.get("schema_version", 1)
        if isinstance(version, int) and version > cls.SCHEMA_VERSION:
            raise InputError(
                f"{source}: schema_version {version} is newer than this kvmple reads "
                f"({cls.SCHEMA_VERSION})",
                hint="upgrade kvmple, or redo the step with this one",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(top level)"
            kind = first.get("type", "")
            problem = "required key is missing" if kind == "missing" else first.get("msg", "")
            more = len(exc.errors()) - 1
            extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
            raise InputError(f"{source}: {key}: {problem}{extra}", hint=hint) from exc

    @classmethod
    def read(cls: type[R], path: Path, hint: str | None = None) -> R:
        """Read and validate the record at ``path``; FileNotFoundError passes through (the
        caller knows what a missing record means), other problems are InputError."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror}", hint=hint) from exc
        return cls.from_json(text, str(path), hint=hint)

"""A night's persistent state: one directory per night with ``state.json`` (each step's
status, timings, detail and outputs; the verdict) and one log file per step.

Every write goes to a temporary name first and is renamed, so a crash or a host reboot
never leaves a half-written state: the next ``kvmple nightly`` reads the last complete one,
skips the steps that are done and re-runs a step that was running when the host went down.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import JsonValue, TypeAdapter, ValidationError

from kvmple import paths
from kvmple.config.jsonfile import first_error
from kvmple.errors import StoreError, UsageError
from kvmple.nightly.outputs import StepOutputs

OutputsT = TypeVar("OutputsT", bound=StepOutputs)

STEPS: tuple[str, ...] = (
    "fetch",
    "apply",
    "build",
    "boot-test",
    "install",
    "campaign",
    "compare",
)
StepStatus = Literal["pending", "running", "done", "skipped", "failed"]
FINISHED: frozenset[str] = frozenset({"done", "skipped"})
STATE_FILE = "state.json"
_NIGHT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class StepState:
    status: StepStatus = "pending"
    started: float | None = None
    ended: float | None = None
    detail: str = ""
    hint: str = ""
    exit_code: int = 0
    # the step's StepOutputs as stored in state.json (read them with NightState.outputs_of),
    # plus the framework's first_started
    outputs: dict[str, JsonValue] = field(default_factory=dict)
    attempts: int = 0

    @property
    def first_started(self) -> float | None:
        """When the step's first attempt started (epoch seconds): kept across attempts."""
        value = self.outputs.get("first_started")
        return float(value) if isinstance(value, int | float) else None

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return round(self.ended - self.started, 1)


@dataclass
class NightState:
    config: str  # the job name
    night: str
    config_path: str
    config_sha256: str
    host: str
    created: float
    steps: dict[str, StepState] = field(default_factory=dict)
    verdict: str | None = None
    exit_code: int | None = None
    summary: str = ""
    finished: float | None = None

    def step(self, name: str) -> StepState:
        return self.steps.setdefault(name, StepState())

    def outputs_of(self, step: str, model: type[OutputsT]) -> OutputsT | None:
        """The outputs ``step`` recorded, validated as ``model``; None when it recorded none
        (not run, failed, or skipped without outputs). StoreError names the step and key
        when state.json holds outputs of another shape (hand-edited)."""
        raw = self.step(step).outputs
        if not set(raw) - {"first_started"}:
            return None
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            key, msg = first_error(exc)
            raise StoreError(
                f"night {self.night} state.json: steps.{step}.outputs.{key}: {msg}",
                hint="the night's state was edited or written by another kvmple: "
                "start a new night (--night NEW-ID)",
            ) from exc

    def need(self, step: str, model: type[OutputsT]) -> OutputsT:
        """Like ``outputs_of``, for a step that must have run before (StoreError if not)."""
        found = self.outputs_of(step, model)
        if found is None:
            raise StoreError(
                f"night {self.night}: step {step} recorded no outputs, a later step needs them",
                hint="start a new night (--night NEW-ID)",
            )
        return found

    def to_json(self) -> dict[str, JsonValue]:
        """The ``state.json`` object: the fields, and each step's ``seconds`` (shown, not
        read back)."""
        steps: dict[str, JsonValue] = {
            name: {**asdict(step), "seconds": step.seconds} for name, step in self.steps.items()
        }
        return {**asdict(self), "steps": steps}

    @classmethod
    def from_json(cls, data: object) -> NightState:
        """Validate a parsed ``state.json``; unknown keys (``seconds``) are ignored.
        pydantic's ValidationError when a key is missing or mistyped (``load`` names it)."""
        return _NIGHT_STATE.validate_python(data)


_NIGHT_STATE: TypeAdapter[NightState] = TypeAdapter(NightState)


def default_night_id(now: float | None = None) -> str:
    """The UTC date: one night per day unless the caller names another."""
    stamp = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    return stamp.strftime("%Y-%m-%d")


def check_night_id(night: str) -> str:
    if not _NIGHT_ID.match(night) or night in (".", ".."):
        raise UsageError(
            f"night id {night!r} is not usable as a directory name",
            hint="letters, digits, '.', '_' and '-' (default: the UTC date)",
        )
    return night


def jobs_dir(config_name: str) -> Path:
    """data_dir()/nightly/<config-name>: one sub-directory per night."""
    return paths.data_dir() / "nightly" / config_name


def night_dir(config_name: str, night: str) -> Path:
    return jobs_dir(config_name) / check_night_id(night)


def save(state: NightState, directory: Path) -> None:
    """Write ``state.json`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state.to_json(), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(directory: Path) -> NightState | None:
    """The night's state, or None when the night has not started."""
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path}: unreadable night state ({exc})",
            hint=f"move {directory} away to start this night again",
        ) from exc
    try:
        return NightState.from_json(data)
    except ValidationError as exc:
        key, msg = first_error(exc)
        raise StoreError(
            f"{path}: not a kvmple night state ({key}: {msg})",
            hint=f"move {directory} away to start this night again",
        ) from exc


def previous_nights(config_name: str, before: str) -> list[NightState]:
    """Earlier nights of this job, newest first (by creation time, then id)."""
    base = jobs_dir(config_name)
    if not base.is_dir():
        return []
    nights = []
    for child in base.iterdir():
        if child.name == before or not child.is_dir():
            continue
        try:
            state = load(child)
        except StoreError:
            continue  # a damaged night is no baseline
        if state is not None:
            nights.append(state)
    return sorted(nights, key=lambda s: (s.created, s.night), reverse=True)

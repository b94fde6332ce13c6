"""The in-lab result document (the JSON behind protocol.RESULT_MARK, written by
kvmple.commands.lab_inner.verify) as the outer host validates it.

Kept apart from protocol.py: the in-lab program imports protocol.py inside the Bochs lab
host, where pydantic is not shipped; only the outer host imports this module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Doc(BaseModel):
    """A part of the result document: frozen; keys a model does not name are kept (extra)
    and, like the named ones, dumped only when the lab host sent them (``exclude_unset``),
    so the outer host reports exactly what came."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class LabStep(_Doc):
    """One ``kvmple ple ...`` command run in the lab host (lab_inner.run_cli)."""

    command: str | None = None  # 'kvmple ple off'
    exit_code: int | None = None
    output: str | None = None


class LabCounts(_Doc):
    """The exit counter's counts (campaign.evidence.ExitCounter.counts); more keys kept."""

    pause_exits: int | None = None
    ple_window_updates: int | None = None


class LabSpin(_Doc):
    """The PAUSE-loop guest's record (host.kvmrun's spin result): KVM's own statistics."""

    kvm_stats: dict[str, JsonValue] = {}


class LabSetting(_Doc):
    """One PLE setting measured: the values read back (sysfs module parameters) and the
    counts while the PAUSE-loop guest spun; ``error`` instead when it failed."""

    setting: str | None = None  # 'on (module defaults)', 'off', 'on', ...
    command: LabStep | None = None
    ple: dict[str, int] | None = None  # ple_gap, ple_window, ... as read back
    counts: LabCounts | None = None
    spin: LabSpin | None = None
    hist: dict[str, str] | None = None  # raw hist files, kept for a reader
    error: str | None = None


class LabResult(_Doc):
    """The document behind RESULT_MARK (lab_inner.verify), or ``error`` alone when the in-lab
    verification failed."""

    error: str | None = None
    kernel: str | None = None
    emulated: str | None = None
    vmx_ple_flag: bool | None = None
    steps: list[LabStep] = []
    settings: list[LabSetting] = []
    initial: dict[str, int] | None = None
    final: dict[str, int] | None = None
    yield_: LabSetting | None = Field(default=None, alias="yield")

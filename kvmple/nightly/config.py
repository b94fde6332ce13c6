"""The nightly config: one YAML file naming the tree, series, kernel config, playbook,
baseline policy, thresholds and notification outputs. Parsed once, frozen, every key
described."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvmple.config.loader import load_model

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TreeSpec(BaseModel):
    """Where the kernel source comes from: a local git checkout or a git URL, and a ref."""

    model_config = _FROZEN
    path: Path | None = Field(default=None, description="a local git checkout of the tree")
    url: str | None = Field(default=None, description="a git URL to clone/fetch (cached)")
    ref: str = Field(default="HEAD", description="branch, tag or commit to validate")

    @model_validator(mode="after")
    def _one_source(self) -> TreeSpec:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of path (a local git tree) or url (git URL)")
        if self.ref.startswith("-") or not self.ref.strip():
            raise ValueError(f"ref {self.ref!r} is not a git revision")
        return self


class KernelSpec(BaseModel):
    """How to build and boot-test the patched tree (see 'kvmple kernel build')."""

    model_config = _FROZEN
    config: str = Field(
        default="tinyconfig",
        description="base config: a make *config target, 'running', or a config file",
    )
    fragments: tuple[str, ...] | None = Field(
        default=None,
        description="config fragments (default with tinyconfig: kvm_guest.config + kvmple-boot)",
    )
    allow_vanish: tuple[str, ...] = Field(
        default=(), description="fragment options olddefconfig may drop without failing"
    )
    jobs: int = Field(default=0, ge=0, description="make -j (0: one per CPU)")
    ccache: bool | None = Field(default=None, description="use ccache (default: when installed)")
    build_timeout: float = Field(default=7200, gt=0, description="seconds for the build")
    boot_timeout: float = Field(default=180, gt=0, description="seconds for the boot test")
    boot_accel: Literal["auto", "kvm", "tcg"] = Field(
        default="auto", description="accelerator of the boot test"
    )
    expect_lines: tuple[str, ...] = Field(
        default=(), description="console lines the boot test must also see"
    )


class Baseline(BaseModel):
    """What the night's campaign is compared with."""

    model_config = _FROZEN
    policy: Literal["last-good", "campaign"] = Field(
        default="last-good",
        description="last-good: the last good night of this config on this host with the "
        "same playbook; campaign: a named campaign",
    )
    campaign: str | None = Field(default=None, description="campaign id (policy: campaign)")

    @model_validator(mode="after")
    def _named(self) -> Baseline:
        if self.policy == "campaign" and not self.campaign:
            raise ValueError("policy 'campaign' needs campaign: <id>")
        if self.policy == "last-good" and self.campaign:
            raise ValueError("campaign is only used with policy: campaign")
        return self


class Email(BaseModel):
    """Mail the summary through the host's sendmail (never anything else)."""

    model_config = _FROZEN
    to: tuple[str, ...] = Field(min_length=1, description="recipients")
    sender: str = Field(default="kvmple@localhost", description="From: address")
    sendmail: Path = Field(default=Path("/usr/sbin/sendmail"), description="sendmail program")
    subject_prefix: str = Field(default="[kvmple nightly]", description="subject prefix")
    when: Literal["always", "problems"] = Field(
        default="always", description="always, or only on failures and regressions"
    )

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if not re.fullmatch(r"[^@\s,;<>]+@[^@\s,;<>]+", address):
                raise ValueError(f"{address!r} is not a plain e-mail address")
        return value


class Notify(BaseModel):
    """Where the night's outcome goes (besides the exit code and the night directory)."""

    model_config = _FROZEN
    junit: Path | None = Field(default=None, description="also write the JUnit XML here")
    markdown: Path | None = Field(default=None, description="also write the summary here")
    email: Email | None = Field(default=None, description="mail the summary via sendmail")


class Install(BaseModel):
    """Installing the kernel on the host under test (hardware hosts only)."""

    model_config = _FROZEN
    enabled: bool = Field(
        default=False,
        description="install and reboot into the kernel (NOT VERIFIED ON HARDWARE); "
        "without VT-x/AMD-V the step is always skipped with the reason",
    )
    method: Literal["auto", "grub-reboot", "kexec"] = Field(
        default="auto", description="how the next boot runs the new kernel"
    )


class NightlyConfig(BaseModel):
    """One nightly validation job."""

    model_config = _FROZEN
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", description="job name (night directories)"
    )
    tree: TreeSpec = Field(description="the moving kernel tree")
    series: str | None = Field(
        default=None,
        description="patch series to apply: a name under patches/, or a path relative to this "
        "file (series.yaml, mbox, .patch, quilt or format-patch folder); none: the tree as is",
    )
    series_revision: int | None = Field(
        default=None, ge=1, description="mail inputs: the revision to apply (default: newest)"
    )
    series_from: Path | None = Field(
        default=None, description="take the series' patches from here (see kernel apply --from)"
    )
    kernel: KernelSpec = Field(default_factory=KernelSpec, description="build and boot test")
    install: Install = Field(default_factory=Install, description="host install")
    playbook: Path = Field(description="the campaign playbook (relative: to this file)")
    allow_unavailable: bool = Field(
        default=False,
        description="run the playbook's other axes when the host lacks a factor (PLE under "
        "TCG), recording it as unavailable",
    )
    store: str | None = Field(default=None, description="results store URL (default SQLite)")
    baseline: Baseline = Field(default_factory=Baseline, description="baseline policy")
    threshold: float = Field(
        default=0.02, gt=0, lt=1, description="smallest change counted (0.02 = 2%)"
    )
    notify: Notify = Field(default_factory=Notify, description="outputs")
    keep_tree: bool = Field(
        default=False, description="keep the patched source worktree after the night"
    )

    @field_validator("threshold", mode="before")
    @classmethod
    def _percent(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                return float(value.strip()[:-1]) / 100
            except ValueError:
                raise ValueError(f"{value!r} is not a percentage") from None
        return value


class LoadedConfig(BaseModel):
    """A config with the paths it names made absolute, and its text's hash."""

    model_config = _FROZEN
    config: NightlyConfig
    path: Path
    sha256: str


def _absolute(base: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: Path) -> LoadedConfig:
    """Load and validate a nightly config; relative paths are relative to its folder."""
    config = load_model(NightlyConfig, path)
    base = path.resolve().parent
    tree = config.tree
    if tree.path is not None:
        tree = tree.model_copy(update={"path": _absolute(base, tree.path)})
    series = config.series
    if series and ("/" in series or series.startswith(".") or (base / series).exists()):
        series = str(_absolute(base, Path(series)))  # a path (any input kind), not a name
    email = config.notify.email
    if email is not None:
        email = email.model_copy(update={"sendmail": _absolute(base, email.sendmail)})
    notify = config.notify.model_copy(
        update={
            "junit": _absolute(base, config.notify.junit),
            "markdown": _absolute(base, config.notify.markdown),
            "email": email,
        }
    )
    resolved = config.model_copy(
        update={
            "tree": tree,
            "series": series,
            "series_from": _absolute(base, config.series_from),
            "playbook": _absolute(base, config.playbook),
            "notify": notify,
        }
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedConfig(config=resolved, path=path.resolve(), sha256=digest)

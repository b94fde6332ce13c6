"""The fleet inventory: hosts reached over SSH (pinned host keys, key authentication) and
the shared results store they all write to."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kvmple.config.loader import load_model

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FleetHost(BaseModel):
    """One host under test."""

    model_config = _FROZEN
    address: str = Field(description="host name or IP address for SSH")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port")
    user: str = Field(default="root", description="SSH user (campaigns need root)")
    key: Path | None = Field(
        default=None, description="private key file (default: kvmple's installation key)"
    )
    host_keys: tuple[str, ...] = Field(
        min_length=1, description="pinned SSH host keys ('type base64' lines): never trust blindly"
    )
    kvmple: tuple[str, ...] = Field(
        default=("kvmple",), min_length=1, description="how to run kvmple on that host (argv)"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="environment for kvmple there (e.g. KVMPLE_DATA_DIR)"
    )
    workdir: str = Field(
        default="/var/tmp/kvmple-fleet", description="where playbooks are copied on that host"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="free-form facts for reports (e.g. cpu: intel)"
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("workdir must be an absolute path on the host")
        return value


class Inventory(BaseModel):
    """Hosts by name, and the store they share."""

    model_config = _FROZEN
    store: str | None = Field(
        default=None,
        description="results store URL every host writes to (postgresql://...; --db overrides)",
    )
    parallel: int | None = Field(
        default=None, ge=1, description="hosts running at once (default: all)"
    )
    timeout: float = Field(default=6 * 3600, gt=0, description="seconds per host's campaign")
    hosts: dict[str, FleetHost] = Field(min_length=1, description="hosts by name")

    @field_validator("hosts")
    @classmethod
    def _names(cls, value: dict[str, FleetHost]) -> dict[str, FleetHost]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
                raise ValueError(f"host name {name!r}: use letters, digits, '.', '_' and '-'")
        return value


def load_inventory(path: Path) -> Inventory:
    """Load and validate an inventory; relative key paths are relative to its folder."""
    inventory = load_model(Inventory, path)
    base = path.resolve().parent
    hosts = {
        name: host.model_copy(
            update={
                "key": host.key if host.key is None or host.key.is_absolute() else base / host.key
            }
        )
        for name, host in inventory.hosts.items()
    }
    return inventory.model_copy(update={"hosts": hosts})

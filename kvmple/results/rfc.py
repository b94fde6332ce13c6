"""The RFC's published figures (shipped as kvmple/data/rfc-v7-amqp-results.yaml, with their
source) and the RFC's view of a campaign: per message size, rows no PLE / PLE, columns by
overcommit, plus the PLE gain and the overcommit cost, compared as ratios because absolute
throughput depends on the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

from kvmple.config.loader import parse_model
from kvmple.results.records import CellValue

RFC_AXES = ("ple", "size", "overcommit")
PLE_ROWS = ("off", "on", "unavailable")
PLE_LABELS = {"off": "no PLE", "on": "PLE", "unavailable": "PLE unavailable"}


class RfcResult(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    size: int = Field(description="message payload, bytes")
    ple: bool = Field(description="PLE enabled")
    overcommit: float = Field(description="busy vCPUs / host CPUs")
    throughput: float = Field(description="perftest transfers per second")


class RfcFigures(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    source: str = Field(description="where the figures were published")
    guests: dict[str, int] = Field(description="guest/host CPU counts of the setup")
    spinners_to_overcommit: dict[int, float] = Field(description="spinner loops -> overcommit")
    repetitions: int = Field(description="runs per cell")
    results: list[RfcResult] = Field(description="one figure per (size, ple, overcommit)")

    def throughput(self, size: int, ple: bool, overcommit: float) -> float | None:
        for r in self.results:
            if r.size == size and r.ple == ple and same_overcommit(r.overcommit, overcommit):
                return r.throughput
        return None

    def cost(self, size: int, ple: bool, overcommit: float) -> float | None:
        """Throughput at ``overcommit`` over throughput at 1.0x (no overcommit)."""
        at = self.throughput(size, ple, overcommit)
        base = self.throughput(size, ple, 1.0)
        return None if at is None or not base else at / base

    def gain(self, size: int, overcommit: float) -> float | None:
        """PLE on / PLE off (a ratio: 1.13 = +13%)."""
        on = self.throughput(size, True, overcommit)
        off = self.throughput(size, False, overcommit)
        return None if on is None or not off else on / off


@cache
def rfc_figures() -> RfcFigures:
    """The published RFC v7 AMQP figures shipped with kvmple."""
    name = "rfc-v7-amqp-results.yaml"
    text = (resources.files("kvmple") / "data" / name).read_text(encoding="utf-8")
    return parse_model(RfcFigures, text, f"kvmple/data/{name}")


def same_overcommit(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


def ple_row(value: CellValue) -> str:
    """Normalise a cell's PLE value: off / on / unavailable."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    if text in {"off", "no", "false", "0", "disabled"}:
        return "off"
    if text in {"on", "yes", "true", "1", "enabled"}:
        return "on"
    return "unavailable"


def is_rfc_shaped(cells: list[dict[str, CellValue]]) -> bool:
    """Every cell has a PLE setting, a message size and a numeric overcommit."""
    return bool(cells) and all(
        all(a in c for a in RFC_AXES)
        and isinstance(c["overcommit"], int | float)
        and not isinstance(c["overcommit"], bool)
        for c in cells
    )


@dataclass(frozen=True)
class RfcKey:
    """Where a cell sits in the RFC table: group (size + other axes), row, column."""

    group: tuple[tuple[str, CellValue], ...]
    row: str
    overcommit: float


def rfc_key(cell: dict[str, CellValue]) -> RfcKey:
    extra = tuple((k, v) for k, v in cell.items() if k not in RFC_AXES and k != "spinners")
    overcommit = cell["overcommit"]
    assert isinstance(overcommit, int | float)
    return RfcKey(
        group=(("size", cell["size"]), *extra),
        row=ple_row(cell["ple"]),
        overcommit=float(overcommit),
    )

"""stop_unit: which systemctl is-active states are stopped (a starting broker counts)."""

from __future__ import annotations

import pytest

from kvmple.run import Result
from kvmple.workloads.spin import stop_unit


class _Systemd:
    """Answers `systemctl is-active` with ``state``; records every argv."""

    name = "fake guest"

    def __init__(self, state: str) -> None:
        self.state = state
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: list[str], **_: object) -> Result:
        self.calls.append(tuple(argv))
        out = f"{self.state}\n" if argv[1] == "is-active" else ""
        status = 0 if argv[1] == "stop" or self.state == "active" else 3
        return Result(tuple(argv), status, out, "", 0.0, where=self.name)


@pytest.mark.parametrize(
    ("state", "stopped"),
    [("active", True), ("activating", True), ("reloading", True), ("inactive", False),
     ("failed", False), ("unknown", False)],
)  # fmt: skip
def test_a_running_or_starting_unit_is_stopped(state: str, stopped: bool) -> None:
    guest = _Systemd(state)
    assert stop_unit(guest, "rabbitmq-server", timeout=30) is stopped  # type: ignore[arg-type]
    assert (("systemctl", "stop", "rabbitmq-server") in guest.calls) is stopped

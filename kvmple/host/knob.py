"""The shape every host knob has (pyperf ``_system.py``'s Operation): available / read /
apply / restore, each change read back. The registry and the driver that applies and restores
a block's knobs are in :mod:`kvmple.host.knobs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from kvmple.host.seam import HostSeam


class KnobReading(Protocol):
    """What a knob reads back from the host (stored as run provenance via ``to_json``)."""

    def to_json(self) -> dict[str, object]: ...


class Knob(ABC):
    """One host tunable a campaign factor varies; each subclass narrows the reading type
    its read/apply/restore return (restore takes back what its read gave).

    ``settings`` are the values a playbook may ask for (strings, as the plan keys them);
    ``needs_kvm`` knobs mean nothing when guests run under TCG, so a TCG host cannot provide
    them whatever the knob's own check says.
    """

    # Plain attributes, not ClassVars: knobs named by what they change (kvm.halt_poll_ns, a
    # /sys path: kvmple.host.paramknobs) set them per instance.
    name: str  # the playbook's ``factors[].knob``
    title: str  # how messages name it ("PLE")
    settings: tuple[str, ...] = ()
    needs_kvm: bool = True
    change_note: str = ""  # said when a setting is applied (how, what is unverified)
    provider_hint: str = ""  # where to find a host that has it

    @abstractmethod
    def available(self, seam: HostSeam) -> str | None:
        """None when this host has the knob, else why not (one line; changes nothing)."""

    @abstractmethod
    def read(self, seam: HostSeam) -> KnobReading:
        """The knob's current state (HostError when unreadable or unavailable)."""

    @abstractmethod
    def apply(self, seam: HostSeam, setting: str) -> KnobReading:
        """Set ``setting`` and return the state read back; HostError (after which the host may
        be changed: :meth:`restore` puts it back) when the read-back differs from the request,
        or when the change is impossible now (then nothing changed)."""

    @abstractmethod
    def restore(self, seam: HostSeam, before: KnobReading) -> KnobReading:
        """Put back ``before`` (an earlier :meth:`read`) and return the state read back."""

    def without_kvm(self, seam: HostSeam, host_reason: str) -> str:
        """Why a host whose guests run under TCG cannot vary a ``needs_kvm`` knob."""
        return host_reason or f"{self.title} is not available"

    def check_setting(self, setting: object) -> str:
        """``setting`` as this knob's canonical string (ValueError naming the allowed ones)."""
        if isinstance(setting, str) and setting in self.settings:
            return setting
        allowed = " or ".join(repr(s) for s in self.settings)
        raise ValueError(f"knob {self.name!r} takes {allowed}, not {setting!r}")

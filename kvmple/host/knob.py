"""The shape every host knob has (pyperf ``_system.py``'s Operation): available / read /
apply / restore, each change read back. The registry and the driver that applies and restores
a block's knobs are in :mod:`kvmple.host.knobs`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kvmple.host.seam import HostSeam

if TYPE_CHECKING:  # the lab host runs the host layer without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue


class KnobReading(Protocol):
    """What a knob reads back from the host (stored as run provenance via ``to_json``)."""

    def to_json(self) -> dict[str, JsonValue]: ...


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

    def check_settings(
        self, settings: Sequence[object], declared_type: str | None = None
    ) -> tuple[str, ...]:
        """A playbook factor's settings, each checked as it loads (ValueError naming the bad
        one); ``declared_type`` is the factor's ``type:``, which only knobs whose values have
        a kernel type (module parameters) take."""
        if declared_type is not None:
            raise ValueError(
                f"knob {self.name!r} takes no 'type' (only KVM module parameters have one)"
            )
        return tuple(self.check_setting(setting) for setting in settings)

    def check_setting(self, setting: object) -> str:
        """``setting`` as this knob's canonical string (ValueError naming the allowed ones)."""
        if isinstance(setting, str) and setting in self.settings:
            return setting
        allowed = " or ".join(repr(s) for s in self.settings)
        raise ValueError(f"knob {self.name!r} takes {allowed}, not {setting!r}")


@dataclass(frozen=True)
class VmSetting:
    """A per-VM knob's setting; ``guests`` maps domain name -> what its QEMU was started
    with, ``in_guest`` domain name -> what the guest itself reports (both filled once the
    guests run)."""

    knob: str
    setting: str | None
    guests: tuple[tuple[str, str], ...] = ()
    in_guest: tuple[tuple[str, dict[str, JsonValue]], ...] = ()

    def to_json(self) -> dict[str, JsonValue]:
        data: dict[str, JsonValue] = {"per_vm": True, "value": self.setting}
        if self.guests:
            data["guests"] = dict(self.guests)
        if self.in_guest:
            data["in_guest"] = dict(self.in_guest)
        return data


class VmKnob(Knob):
    """A knob each guest gets when it starts (QEMU arguments in its domain), not host state:
    reading, applying and restoring change nothing on the host; :mod:`kvmple.host.vmknobs`
    reads the setting back from every running guest's QEMU command line."""

    needs_kvm = True

    def available(self, seam: HostSeam) -> str | None:
        return None  # QEMU options every supported QEMU (7.2+) has

    def read(self, seam: HostSeam) -> VmSetting:
        return VmSetting(self.name, None)

    def apply(self, seam: HostSeam, setting: str) -> VmSetting:
        return VmSetting(self.name, self.check_setting(setting))

    def restore(self, seam: HostSeam, before: object) -> VmSetting:
        return VmSetting(self.name, None)  # nothing on the host to put back

    @abstractmethod
    def qemu_args(self, setting: str) -> tuple[str, ...]:
        """The QEMU arguments a guest gets for ``setting`` (ValueError for a bad one)."""

"""Host knobs as operations (pyperf ``_system.py``'s Operation table): every tunable a
campaign factor can vary is one :class:`Knob` in :data:`REGISTRY`, with
``available / read / apply / restore`` and a read-back on every change; :func:`applied` is the
one driver that sets a block's knobs and puts back what it changed, in reverse order, also on
error or Ctrl-C.

Nothing outside this module tests a knob's name: the playbook validates ``factors[].knob``
and its values against the registry, the campaign asks :func:`unavailable` which factors this
host cannot provide (and why) and enters :func:`applied` per block.

Adding a knob (issue 16: a KVM module parameter such as ``kvm.halt_poll_ns``, per-VM
``cpu-pm``, guest PV CPU features, a sysfs/debugfs path) means one subclass of :class:`Knob`
and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmple.errors import HostError, KvmpleError
from kvmple.host import paramknobs, ple, vmknobs
from kvmple.host.knob import Knob, KnobReading

__all__ = ["REGISTRY", "Applied", "Knob", "KnobReading", "PleKnob", "applied", "get", "unavailable"]
from kvmple.host.seam import HostSeam

if TYPE_CHECKING:  # the lab host runs the host layer without pydantic (lab/bochs_media.py)
    from pydantic import JsonValue

log = logging.getLogger("kvmple.host.knobs")


class PleKnob(Knob):
    """Pause-Loop Exiting on/off: the switch parameter of kvm_intel (ple_gap) or kvm_amd
    (pause_filter_count), changed by a module reload (:mod:`kvmple.host.ple`)."""

    name = "ple"
    title = "PLE"
    settings = ("on", "off")
    change_note = "module reload; verified on emulated lab hosts, not on hardware"
    provider_hint = "use a host where 'kvmple doctor' says kvm+ple"

    def available(self, seam: HostSeam) -> str | None:
        decision = ple.decide_ple(seam)  # the one answer doctor and `ple status` give too
        if decision.available:
            return None
        return f"{decision.reason} (decided by {decision.basis})"

    def read(self, seam: HostSeam) -> ple.PleKnobs:
        return ple.read_knobs(seam)

    def apply(self, seam: HostSeam, setting: str) -> ple.PleKnobs:
        mode: ple.Mode = "on" if self.check_setting(setting) == "on" else "off"
        knobs = ple.apply(seam, ple.target_values(seam, mode))  # raises on a differing read-back
        if knobs.enabled != (mode == "on"):
            raise HostError(
                f"PLE {mode} was applied but {knobs.module} reads back "
                f"{knobs.spec.switch}={knobs.values.get(knobs.spec.switch)}",
                hint="the kernel forces PLE off without hardware support (check dmesg); "
                "'kvmple ple restore' puts the saved originals back",
            )
        return knobs

    def restore(self, seam: HostSeam, before: KnobReading) -> ple.PleKnobs:
        if not isinstance(before, ple.PleKnobs):
            raise TypeError(f"not a PLE reading: {before!r}")
        return ple.apply(seam, before.values)


REGISTRY: dict[str, Knob] = {knob.name: knob for knob in (PleKnob(), *vmknobs.VM_KNOBS.values())}
"""Every knob a playbook factor may name, by name."""


def get(name: str) -> Knob:
    """The knob called ``name``: one of :data:`REGISTRY`, a KVM module parameter
    ``MODULE.PARAM`` or a /sys path (:mod:`kvmple.host.paramknobs`); HostError otherwise,
    naming the known ones."""
    if name in REGISTRY:
        return REGISTRY[name]
    if paramknobs.MODULE_PARAM.match(name):
        return paramknobs.ModuleParamKnob(name)
    if name.startswith("/"):
        return paramknobs.SysfsPathKnob(name)
    raise HostError(
        f"unknown host knob {name!r}",
        hint=f"known knobs: {', '.join(sorted(REGISTRY))}, a KVM module parameter "
        "(kvm.halt_poll_ns, kvm_intel.ple_window, ...) or a /sys or /sys/kernel/debug path",
    )


def unavailable(
    names: Iterable[str], seam: HostSeam, *, accelerator: str, host_reason: str
) -> dict[str, str]:
    """The knobs among ``names`` this host cannot provide, each with why.

    ``accelerator`` is the doctor's ("kvm" or "tcg"); under TCG a ``needs_kvm`` knob is
    unavailable with the knob's own reason, or else ``host_reason`` (why the host runs TCG).
    """
    missing: dict[str, str] = {}
    for name in names:
        knob = get(name)
        reason = knob.available(seam)
        if reason is None and knob.needs_kvm and accelerator != "kvm":
            reason = knob.without_kvm(seam, host_reason)
        if reason is not None:
            missing[name] = reason
    return missing


@dataclass(frozen=True)
class Applied:
    """One knob as a block runs with it: the setting asked for and the state read back."""

    knob: str
    setting: str
    reading: KnobReading

    def to_json(self) -> dict[str, JsonValue]:
        return {"setting": self.setting, **self.reading.to_json()}


@contextmanager
def applied(
    settings: Sequence[tuple[str, str]],
    seam: HostSeam,
    *,
    announce: Callable[[Knob, str], None] | None = None,
) -> Iterator[dict[str, Applied]]:
    """Apply ``(knob, setting)`` pairs in order for the duration of the block; yield what each
    read back. On exit (also on error or Ctrl-C) every knob touched gets back the state read
    before it was applied, in reverse order. A knob whose apply failed is restored too (its
    reload may have happened); a restore that fails while another error propagates is logged
    and the first error wins.

    Raises HostError (unknown knob, unavailable, refused, read-back differs).
    """
    touched: list[tuple[Knob, KnobReading]] = []
    out: dict[str, Applied] = {}
    try:
        for name, setting in settings:
            knob = get(name)
            before = knob.read(seam)
            touched.append((knob, before))
            if announce is not None:
                announce(knob, setting)
            out[name] = Applied(name, setting, knob.apply(seam, setting))
        yield out
    except BaseException:
        _restore_all(touched, seam, raise_errors=False)
        raise
    _restore_all(touched, seam, raise_errors=True)


def _restore_all(
    touched: list[tuple[Knob, KnobReading]], seam: HostSeam, *, raise_errors: bool
) -> None:
    first: KvmpleError | None = None
    for knob, before in reversed(touched):
        try:
            knob.restore(seam, before)
        except KvmpleError as exc:
            log.warning("restoring %s failed: %s", knob.name, exc.message)
            first = first or exc
    if first is not None and raise_errors:
        raise first

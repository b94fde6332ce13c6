"""Booted snapshots: save a ready guest once, start later guests of the same shape from it.

The first boot of a key boots cold, waits for readiness, saves the guest
(``virDomainSaveFlags``: memory + device state, the domain stops), copies its overlay as it
was at that moment and publishes both in the cache (kvmple.vm.snapcache: temporary name,
rename). Then it, like every later guest of that key, is *restored*: a private copy of the
save image whose header carries this guest's domain XML (kvmple.vm.saveimage: libvirt 9.0
refuses a replacement XML with another name, UUID or genid), a new overlay on top of the
cached disk (the cached one is never written), the guest's own SSH port and vCPU pins.

After a restore, before anything is measured (``settle``):

- clock: the guest slept while saved, so CLOCK_REALTIME lags the host by the time in the
  cache. One guest process steps it (``settle``: clock_settime by the host's answer,
  relative to its own clock; ``date -s @<host time + half a round trip>`` left it 4.6 s
  behind at load 20). CLOCK_MONOTONIC never jumps: the guest did not run while saved.
- randomness: the domain has a VM generation ID (``<genid/>``); libvirt 9.0 gives a restored
  domain a new one (measured: the live genid differs from the one in the image), and
  Linux 6.1's vmgenid driver (CONFIG_VMGENID=y in Debian 12) then reseeds the guest's CRNG
  (drivers/virt/vmgenid.c -> add_vmfork_randomness). Also 64 host random bytes are written
  to /dev/urandom. What is *not* fresh: /proc/sys/kernel/random/boot_id is the snapshot's.
- readiness is checked again (SSH, then e.g. the broker probe); a failure discards the
  snapshot and the guest boots cold (the caller does that: ``RestoreFailed``).
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmple.errors import GuestError, KvmpleError
from kvmple.events import Progress, Warn
from kvmple.run import run
from kvmple.vm import reaper, registry, saveimage, snapcache, snapkey
from kvmple.vm.domxml import QEMU_NS

if TYPE_CHECKING:
    from kvmple.remote import SSHExecutor
    from kvmple.vm.libvirt_backend import Libvirt
    from kvmple.vm.lifecycle import Guest, _Boot
    from kvmple.vm.spec import VMSpec

CONSOLE = "console.log"
RESTORE_TIMEOUT = 300.0  # s: a loaded 2-core TCG host took up to 70 s to restore a 1 GiB guest


class RestoreFailed(GuestError):
    """A restore (or the readiness after it) failed: discard the snapshot, boot cold."""


@dataclass(frozen=True)
class Readiness:
    """What "ready" means for a guest beyond answering SSH, and so what a snapshot holds.

    ``level`` names it ("ssh", "ssh+broker"), ``version`` names what ``check`` relies on
    (e.g. the guest programs' digests); both are part of the snapshot key. ``check(executor,
    timeout)`` raises a KvmpleError while the guest is not ready; ``label`` is not in the key.
    """

    level: str = "ssh"
    version: str = ""
    check: Callable[[SSHExecutor, float], None] | None = None
    label: str = ""  # what check does, shown as progress ("preparing amqp-perftest")


SSH_ONLY = Readiness()


def key_fields(spec: VMSpec, readiness: Readiness, versions: Mapping[str, int]) -> dict[str, Any]:
    """The snapshot key's fields for ``spec`` once ``readiness`` is reached (snapkey)."""
    return snapkey.key_fields(spec, readiness.level, readiness.version, versions)


def restore_xml(saved_xml: str, guest_xml: str) -> str:
    """The saved domain definition dressed as this guest: name, title, metadata, vCPU pins,
    disk, console and QEMU command line (SSH port) from ``guest_xml``; a fresh UUID and
    genid. Everything else (machine type, device addresses, CPU) stays as saved, so QEMU's
    migration stream matches the devices."""
    saved = ET.fromstring(saved_xml)
    guest = ET.fromstring(guest_xml)
    for tag in ("name", "title", "metadata", "cputune"):
        _swap(saved, guest, tag)
    _set_text(saved, "uuid", str(uuid.uuid4()))
    _set_text(saved, "genid", str(uuid.uuid4()))
    _copy_attr(saved, guest, "devices/disk/source", "file")
    for path in ("devices/serial/source", "devices/console/source"):
        _copy_attr(saved, guest, path, "path")
        saved.find(path).set("append", "on")  # type: ignore[union-attr]  # after _seed_console
    _swap(saved, guest, f"{{{QEMU_NS}}}commandline")
    ET.indent(saved)
    return ET.tostring(saved, encoding="unicode") + "\n"


def _swap(saved: ET.Element, guest: ET.Element, tag: str) -> None:
    old, new = saved.find(tag), guest.find(tag)
    if old is not None:
        index = list(saved).index(old)
        saved.remove(old)
    else:
        index = len(saved)
    if new is not None:
        saved.insert(index, new)


def _set_text(root: ET.Element, tag: str, text: str) -> None:
    element = root.find(tag)
    if element is None:
        element = ET.SubElement(root, tag)
    element.text = text


def _copy_attr(saved: ET.Element, guest: ET.Element, path: str, attr: str) -> None:
    src, dst = guest.find(path), saved.find(path)
    if src is None or dst is None or src.get(attr) is None:
        raise RestoreFailed(f"the saved domain has no {path} to point at this guest's file")
    dst.set(attr, str(src.get(attr)))


def make_overlay(backing: Path, overlay: Path) -> None:
    """A new qcow2 ``overlay`` on top of ``backing`` (which is never written through it)."""
    overlay.unlink(missing_ok=True)
    run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
         str(backing.resolve()), str(overlay)],
        timeout=60,
        what=f"creating the overlay {overlay}",
    )  # fmt: skip


def restore(
    lv: Libvirt,
    entry: snapcache.Snapshot,
    name: str,
    guest_xml: str,
    run_dir: Path,
    *,
    timeout: float = RESTORE_TIMEOUT,
) -> dict[str, float]:
    """Start ``name`` from ``entry``: private save image in ``run_dir`` with ``guest_xml``'s
    host-side parts, restored within ``timeout`` s. RestoreFailed for a bad image (truncated,
    partial, another QEMU's), a refused or hung restore; GuestError (port taken) as lv says.
    Returns the seconds spent copying the image and in libvirt's restore."""
    image = run_dir / "restore.save"
    start = time.monotonic()
    try:
        damage = entry.damage()
        if damage:
            raise saveimage.SaveImageError(damage)
        _seed_console(entry, run_dir)
        header = saveimage.read_header(entry.memory)
        saveimage.write_relabelled(entry.memory, image, restore_xml(header.xml, guest_xml))
    except (saveimage.SaveImageError, ET.ParseError, OSError) as exc:
        raise RestoreFailed(f"snapshot {entry.key[:12]} is unusable: {exc}") from exc
    copied = time.monotonic()
    try:
        _restore_within(lv, image, name, timeout)
    finally:
        image.unlink(missing_ok=True)  # QEMU has read it; a per-guest copy is ~memory-sized
    snapcache.touch(entry)
    return {"copy_s": round(copied - start, 2), "restore_s": round(time.monotonic() - copied, 2)}


def _seed_console(entry: snapcache.Snapshot, run_dir: Path) -> None:
    """Start the guest's console log with the console of the boot that made the snapshot
    and a line saying so (QEMU appends after it: restore_xml sets append='on')."""
    saved = entry.directory / CONSOLE
    text = saved.read_bytes() if saved.is_file() else b""
    note = f"\n[kvmple: restored from booted snapshot {entry.key}; above: the boot that saved it]\n"
    (run_dir / "console.log").write_bytes(text + note.encode())


def _restore_within(lv: Libvirt, image: Path, name: str, timeout: float) -> None:
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            lv.restore(str(image), name)
            outcome.append(None)
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)

    worker = threading.Thread(target=work, name=f"kvmple-restore-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        lv.destroy(name)  # makes the pending restore fail; the domain is ours (claimed)
        worker.join(60)
        raise RestoreFailed(f"restoring {name} did not finish within {timeout:g}s (stopped)")
    error = outcome[0] if outcome else None
    if isinstance(error, GuestError) and "forwarding" in error.message:
        raise error  # the SSH port was taken meanwhile: the caller retries with another
    if isinstance(error, KvmpleError):
        raise RestoreFailed(error.message) from error
    if isinstance(error, Exception):
        # seen here: a stream with 4 KiB overwritten mid-RAM made the libvirt binding raise
        # "SystemError: <virDomainRestoreFlags> returned a result with an exception set"
        raise RestoreFailed(f"restoring {name} failed: {type(error).__name__}: {error}") from error
    if error is not None:
        raise error  # KeyboardInterrupt and friends


def save(
    lv: Libvirt,
    name: str,
    overlay: Path,
    key: str,
    fields: Mapping[str, Any],
) -> snapcache.Snapshot | None:
    """Save the ready guest ``name`` (it stops) with a copy of ``overlay`` as the entry of
    ``key``; the entry, or None when another boot published it first. GuestError when saving
    fails (disk full, ...): nothing is left in the cache then."""
    stage = snapcache.staging(key)
    try:
        lv.save(name, str(stage / snapcache.MEMORY))
        saveimage.read_header(stage / snapcache.MEMORY)  # complete, not "Part"
        shutil.copyfile(overlay, stage / snapcache.DISK)
        os.chmod(stage / snapcache.DISK, 0o444)
        console = overlay.parent / "console.log"  # the boot's console, for later diagnosis
        if console.is_file():
            shutil.copyfile(console, stage / CONSOLE)
        entry = snapcache.publish(stage, key, fields)
    except (OSError, saveimage.SaveImageError) as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise GuestError(f"saving the snapshot of {name}: {exc}") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    snapcache.prune(keep=key)
    return entry


# Runs in the guest: report its clock, read the host's correction, step by it (relative to
# the guest's own clock, so how late this process starts does not matter), report again.
_STEP = (
    "import sys, time\n"
    "print(repr(time.time()), flush=True)\n"
    "d = float(sys.stdin.readline())\n"
    "time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + d)\n"
    "print(repr(time.time()), flush=True)\n"
)


def settle(executor: SSHExecutor, *, timeout: float = 60.0) -> dict[str, Any]:
    """After a restore: step the guest's clock to the host's, stir host randomness into the
    guest's pool, and read back the clock offset and whether the vmgenid driver is bound.

    The clock: one guest process prints its CLOCK_REALTIME; the host answers with (its own
    time on receipt - that value) and the guest steps by it (clock_settime), then prints
    again. The offset left (guest - host on receipt) is bounded by the guest->host latency
    of one line; the uncertainty reported is the host's wait for that second line.
    Returns {"clock_offset_ms", "clock_uncertainty_ms", "vmgenid_driver"}.
    """
    seen: list[tuple[float, float]] = []  # (guest time, host time on receipt)

    def on_line(line: str) -> str | None:
        received = time.time()
        seen.append((float(line.strip()), received))
        return f"{received - seen[0][0]!r}\n" if len(seen) == 1 else None

    executor.stream(
        ["python3", "-c", _STEP], on_line, timeout, what="stepping the guest clock after a restore"
    )
    if len(seen) != 2:
        raise GuestError(f"stepping the clock of {executor.name}: {len(seen)} of 2 lines back")
    seed = base64.b64encode(os.urandom(64)).decode()
    out = executor.run(
        [
            "sh",
            "-c",
            "base64 -d > /dev/urandom; ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -c :",
        ],
        input=seed + "\n",
        timeout=timeout,
        check=False,
        what="seeding /dev/urandom after a restore",
    ).stdout.split()
    (_, asked), (after, received) = seen
    return {
        "clock_offset_ms": round((after - received) * 1000, 1),
        "clock_uncertainty_ms": round((received - asked) * 1000, 1),
        "vmgenid_driver": bool(out) and out[-1] != "0",
    }


@dataclass(frozen=True)
class Policy:
    """How one boot_guests call starts its guests: ``readiness`` by role (default SSH only),
    ``use`` whether snapshots are restored and saved at all."""

    readiness: Mapping[str, Readiness]
    use: bool = True


def wanted(uri: str) -> bool:
    """The default: snapshots on qemu:///system unless KVMPLE_COLD_BOOT=1 (--cold-boot).
    Lab hosts (guests offering svm) too: they are saved with kvm_amd loaded and no nested
    guest running, so no nested SVM state is in the stream (tests/lab runs one restored)."""
    cold = os.environ.get("KVMPLE_COLD_BOOT", "") in ("1", "yes")
    return uri == "qemu:///system" and not cold


def _ready(boot: _Boot, guest: Guest, readiness: Readiness) -> None:
    """SSH, then the readiness check; timings recorded on the guest."""
    boot.wait_ready(guest)
    _check(boot, guest, readiness)
    guest.timings["ready_s"] = time.monotonic() - boot.t0


def _check(boot: _Boot, guest: Guest, readiness: Readiness) -> None:
    """The readiness check beyond SSH, announced as progress (it may take minutes)."""
    if readiness.check is None:
        return
    if readiness.label:
        boot.sink(Progress(label=f"{guest.spec.role}: {readiness.label}"))
    readiness.check(guest.executor, boot.ready_timeout)


def bring_up(boot: _Boot, spec: VMSpec, policy: Policy) -> Guest:
    """Start ``spec``'s guest for ``boot`` and return it ready (see the module doc).

    Restored when the cache has its key; else booted cold, saved, and restored from what was
    just saved (so every guest of a key starts from the same state). A snapshot that fails
    in any way is discarded with one warning line and the guest boots cold.
    """
    readiness = policy.readiness.get(spec.role, SSH_ONLY)
    if not policy.use:
        guest = boot.start(spec)
        _ready(boot, guest, readiness)
        guest.readback["boot"] = {"mode": "cold", "snapshot": None}
        return guest
    fields = key_fields(spec, readiness, boot.lv.versions())
    key = snapcache.key_of(fields)
    snapcache.discard_other_versions(fields, boot.sink)
    saved_here = False
    entry = snapcache.lookup(key)
    if entry is None:
        guest = boot.start(spec)
        _ready(boot, guest, readiness)
        guest.executor.close()  # no SSH session inside the saved state
        try:
            overlay = Path(guest.record.run_dir) / "overlay.qcow2"
            entry = save(boot.lv, guest.name, overlay, key, fields) or snapcache.lookup(key)
        except GuestError as exc:
            boot.sink(
                Warn(f"guest {spec.role}: no snapshot saved ({exc.message}); it runs cold-booted")
            )
            if not guest.alive():  # the failed save took it down: boot it again, cold
                boot.drop(guest)
                return bring_up(boot, spec, replace(policy, use=False))
            guest.readback["boot"] = {"mode": "cold", "snapshot": None, "note": exc.message}
            return guest
        boot.drop(guest)
        saved_here = True
        if entry is None:
            raise GuestError(f"snapshot {key[:12]} vanished right after it was saved")
    restored: Guest | None = None
    phases: dict[str, float] = {}
    try:
        restored = boot.start(spec, backing=entry.disk, launch=_launcher(boot, entry, spec, phases))
        t = time.monotonic()
        boot.wait_ready(restored)
        phases["ssh_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        facts = settle(restored.executor)
        phases["settle_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        _check(boot, restored, readiness)
        phases["readiness_s"] = round(time.monotonic() - t, 2)
        restored.timings["ready_s"] = time.monotonic() - boot.t0
    except KvmpleError as exc:
        boot.sink(
            Warn(
                f"snapshot {key[:12]} ({spec.image.name}, {readiness.level}) discarded: "
                f"{exc.message}; booting {spec.role} cold"
            )
        )
        snapcache.discard(key)
        if restored is not None:
            boot.drop(restored)
        else:
            _drop_named(boot, spec.domain_name)
        return bring_up(boot, spec, replace(policy, use=False))
    guest = restored
    guest.readback["boot"] = {
        "mode": "restored",
        "snapshot": key,
        "saved_by_this_boot": saved_here,
        "readiness": readiness.level,
        **facts,
        "seconds": phases,
    }
    return guest


def all_cached(lv: Libvirt, specs: Sequence[VMSpec], policy: Policy) -> bool:
    """True when every guest of ``specs`` would be restored: they can then start together
    (restored guests do not boot, so boot_waves' reason to serialise does not apply)."""
    if not policy.use:
        return False
    versions = lv.versions()
    return all(
        snapcache.lookup(
            snapcache.key_of(key_fields(spec, policy.readiness.get(spec.role, SSH_ONLY), versions))
        )
        is not None
        for spec in specs
    )


def _launcher(
    boot: _Boot, entry: snapcache.Snapshot, spec: VMSpec, phases: dict[str, float]
) -> Callable[[str, Path], None]:
    def launch(xml: str, run_dir: Path) -> None:
        phases.update(restore(boot.lv, entry, spec.domain_name, xml, run_dir))

    return launch


def _drop_named(boot: _Boot, name: str) -> None:
    """Forget a half-started guest of ``boot`` (its record, run directory, domain)."""
    if name in boot.created:
        boot.lv.destroy(name)
    with boot.lock:
        boot.created.discard(name)
        records = [r for r in boot.records if r.domain == name]
        boot.records = [r for r in boot.records if r.domain != name]
    for record in records:
        registry.forget(record)
    reaper.disown(name)

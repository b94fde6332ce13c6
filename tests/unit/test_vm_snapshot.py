"""Booted snapshots: the save-image header, the cache, the restore XML and boot_guests'
snapshot paths (save, restore, every fault falling back to a cold boot) against libvirt's
test:///default driver. The test driver cannot save a QEMU guest, so ``Libvirt.save`` and
``Libvirt.restore`` are replaced by what libvirt does with the file: write a real
"LibvirtQemudSave" header + XML + a stream, and start the domain the header describes."""

from __future__ import annotations

import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmple.errors import GuestError
from kvmple.events import Progress, Recorder, Sink, discard
from kvmple.vm import registry, saveimage, snapcache, snapshot
from kvmple.vm.libvirt_backend import Libvirt, connect
from kvmple.vm.lifecycle import _Boot, boot_guests
from tests.fixtures.fake_image import FileImage
from tests.unit.test_vm_libvirt import _xml
from tests.unit.test_vm_spec import make_spec

TEST_URI = "test:///default"
STREAM = b"QEVM" + bytes(range(256)) * 64


def _image_bytes(xml: str, *, cookie: bytes = b"<cookie/>", pad: int = 4096) -> bytes:
    header = saveimage.SaveHeader(2, 1, 0, "", cookie, saveimage.HEADER_SIZE + pad)
    return saveimage.encode_header(header, xml) + STREAM


# --- save image header -------------------------------------------------------------------


def test_header_round_trip_and_relabel(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    source.write_bytes(_image_bytes("<domain><name>a</name></domain>"))
    header = saveimage.read_header(source)
    assert header.xml == "<domain><name>a</name></domain>"
    assert header.cookie == b"<cookie/>" and header.was_running == 1
    target = tmp_path / "b.save"
    saveimage.write_relabelled(source, target, "<domain><name>b</name></domain>")
    relabelled = saveimage.read_header(target)
    assert relabelled.xml == "<domain><name>b</name></domain>"
    assert relabelled.cookie == b"<cookie/>"
    assert relabelled.stream_offset == header.stream_offset  # the new XML fits the padding
    assert target.read_bytes()[relabelled.stream_offset :] == STREAM


def test_relabel_with_a_longer_xml_moves_the_stream(tmp_path: Path) -> None:
    source = tmp_path / "a.save"
    source.write_bytes(_image_bytes("<domain/>", pad=64))
    target = tmp_path / "b.save"
    long_xml = "<domain>" + "x" * 500 + "</domain>"
    saveimage.write_relabelled(source, target, long_xml)
    header = saveimage.read_header(target)
    assert header.xml == long_xml
    assert target.read_bytes()[header.stream_offset :] == STREAM


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:50], "shorter than a save header"),
        (lambda b: b[:200], "truncated"),
        (lambda b: saveimage.PARTIAL + b[16:], "did not finish"),
        (lambda b: b"NotLibvirtAtAll!" + b[16:], "bad magic"),
        (lambda b: b[:16] + b"\x07" + b[17:], "unsupported header"),
    ],
)
def test_bad_images_are_refused(tmp_path: Path, mangle: object, message: str) -> None:
    path = tmp_path / "x.save"
    path.write_bytes(mangle(_image_bytes("<domain/>")))  # type: ignore[operator]
    with pytest.raises(saveimage.SaveImageError, match=message):
        saveimage.read_header(path)


# --- cache ---------------------------------------------------------------------------------


def _publish(key: str, size: int) -> snapcache.Snapshot:
    stage = snapcache.staging(key)
    (stage / snapcache.MEMORY).write_bytes(b"m" * size)
    (stage / snapcache.DISK).write_bytes(b"d")
    entry = snapcache.publish(stage, key, {"image": "fake", "readiness": "ssh"})
    assert entry is not None
    return entry


def test_publish_lookup_and_lru_prune() -> None:
    old, new = _publish("a" * 64, 2000), _publish("b" * 64, 2000)
    os.utime(old.directory, (time.time() - 100, time.time() - 100))
    assert [e.key for e in snapcache.entries()] == [new.key, old.key]
    assert snapcache.prune(cap=3000) == [old.key]  # least recently used goes first
    assert snapcache.lookup(old.key) is None and snapcache.lookup(new.key) is not None
    assert snapcache.prune(cap=0, keep=new.key) == []  # the entry in use stays
    assert snapcache.remove("bbbbbb") == [new.key]
    assert snapcache.entries() == []


def test_second_publish_of_a_key_loses_cleanly() -> None:
    _publish("c" * 64, 10)
    stage = snapcache.staging("c" * 64)
    (stage / snapcache.MEMORY).write_bytes(b"other")
    assert snapcache.publish(stage, "c" * 64, {}) is None
    assert not stage.exists()
    assert [p.name for p in snapcache.snapshots_dir().iterdir()] == ["c" * 64]


def test_half_built_entries_are_never_used() -> None:
    stage = snapcache.staging("d" * 64)
    (stage / snapcache.MEMORY).write_bytes(b"m")
    assert snapcache.lookup("d" * 64) is None and snapcache.entries() == []


# --- key and restore XML -------------------------------------------------------------------


def test_key_covers_the_guest_shape_but_not_its_pins() -> None:
    versions = {"qemu": 7002000, "libvirt": 9000000}
    base = snapcache.key_of(snapshot.key_fields(make_spec(), snapshot.SSH_ONLY, versions))
    repinned = make_spec(vcpu_pins=((1,), (0,)), campaign_id="other", role="amqp")
    assert snapcache.key_of(snapshot.key_fields(repinned, snapshot.SSH_ONLY, versions)) == base
    for changed in (
        snapshot.key_fields(make_spec(memory_mib=2048), snapshot.SSH_ONLY, versions),
        snapshot.key_fields(make_spec(accelerator="kvm"), snapshot.SSH_ONLY, versions),
        snapshot.key_fields(make_spec(extra_kernel_args=("x=1",)), snapshot.SSH_ONLY, versions),
        snapshot.key_fields(make_spec(), snapshot.Readiness("ssh+broker"), versions),
        snapshot.key_fields(make_spec(), snapshot.SSH_ONLY, {**versions, "qemu": 8000000}),
    ):
        assert snapcache.key_of(changed) != base


def test_restore_xml_takes_host_side_parts_from_the_guest() -> None:
    saved = ET.fromstring(_xml("a"))
    ET.SubElement(saved, "uuid").text = "11111111-1111-1111-1111-111111111111"
    saved.find("genid").text = "22222222-2222-2222-2222-222222222222"  # type: ignore[union-attr]
    guest_spec = make_spec(role="b", vcpu_pins=((1,), (0,)))
    from kvmple.vm.domxml import domain_xml

    guest = domain_xml(guest_spec, overlay=Path("/b.qcow2"), console_log=Path("/b.log"), ssh_port=7)
    out = ET.fromstring(snapshot.restore_xml(ET.tostring(saved, encoding="unicode"), guest))
    assert out.findtext("name") == "kvmple-c1-b"
    assert out.findtext("uuid") != "11111111-1111-1111-1111-111111111111"
    assert out.findtext("genid") not in ("", "22222222-2222-2222-2222-222222222222")
    assert out.find("devices/disk/source").get("file") == "/b.qcow2"  # type: ignore[union-attr]
    pins = [p.get("cpuset") for p in out.findall("cputune/vcpupin")]
    assert pins == ["1", "0"]
    assert "127.0.0.1:7-:22" in ET.tostring(out, encoding="unicode")


# --- boot_guests through the snapshot paths (test:///default) --------------------------


@pytest.fixture
def lv() -> Iterator[Libvirt]:
    with connect(TEST_URI) as conn:
        yield conn
        for name in conn.names("kvmple-"):
            conn.destroy(name)


@pytest.fixture
def fake_qemu(monkeypatch: pytest.MonkeyPatch, lv: Libvirt) -> dict[str, list[str]]:
    """save/restore as libvirt+QEMU do them, on the test driver; SSH and settle faked."""
    calls: dict[str, list[str]] = {"save": [], "restore": [], "ready": []}

    def save(self: Libvirt, name: str, path: str) -> None:
        Path(path).write_bytes(_image_bytes(self.xml(name)))
        self.destroy(name)
        calls["save"].append(name)

    def restore(self: Libvirt, path: str, name: str) -> None:
        self.create(saveimage.read_header(Path(path)).xml, name)
        calls["restore"].append(name)

    monkeypatch.setattr(Libvirt, "save", save)
    monkeypatch.setattr(Libvirt, "restore", restore)
    monkeypatch.setattr(_Boot, "wait_ready", lambda self, guest: calls["ready"].append(guest.name))
    monkeypatch.setattr(snapshot, "settle", lambda executor, **_: {"clock_offset_ms": 0.0})
    return calls


def _boot(
    image: FileImage,
    role: str = "a",
    readiness: dict[str, snapshot.Readiness] | None = None,
    sink: Sink = discard,
) -> dict[str, object]:
    spec = make_spec(role=role, image=image)
    with boot_guests(
        [spec], uri=TEST_URI, ready_timeout=5, snapshots=True, readiness=readiness, sink=sink
    ) as guests:
        (guest,) = guests
        recorded = guest.readback["boot"]
        assert isinstance(recorded, dict)
        restored = recorded["mode"] == "restored"
        assert guest.snapshot == (recorded["snapshot"] if restored else None)
        boot: dict[str, object] = dict(recorded)
        boot["backing"] = _backing(Path(guest.record.run_dir) / "overlay.qcow2")
        console = guest.console_log
        boot["console"] = console.read_text() if console.is_file() else ""
    return boot


def _backing(overlay: Path) -> str:
    from kvmple.run import run

    info = run(["qemu-img", "info", "--output=json", str(overlay)], timeout=30).stdout
    import json

    return str(json.loads(info).get("backing-filename", ""))


def _nothing_left(lv: Libvirt) -> None:
    assert lv.names("kvmple-") == []
    assert registry.all_records() == []
    assert [p.name for p in snapcache.snapshots_dir().iterdir() if p.name[0] == "."] == []


def test_first_boot_saves_then_every_boot_restores(
    lv: Libvirt, image: FileImage, fake_qemu: dict[str, list[str]]
) -> None:
    first = _boot(image, "a")
    (entry,) = snapcache.entries()
    assert first["mode"] == "restored" and first["saved_by_this_boot"] is True
    assert first["snapshot"] == entry.key
    assert fake_qemu["save"] == ["kvmple-c1-a"] and fake_qemu["restore"] == ["kvmple-c1-a"]
    second = _boot(image, "b")  # another name: restored from the same entry
    assert second["mode"] == "restored" and second["saved_by_this_boot"] is False
    assert second["backing"] == str(entry.disk)  # a new overlay on the cached disk
    assert f"restored from booted snapshot {entry.key}" in str(second["console"])
    assert fake_qemu["save"] == ["kvmple-c1-a"]
    assert oct(entry.disk.stat().st_mode & 0o777) == "0o444"
    _nothing_left(lv)


def test_truncated_snapshot_is_discarded_and_the_guest_boots_cold(
    lv: Libvirt,
    image: FileImage,
    fake_qemu: dict[str, list[str]],
) -> None:
    _boot(image, "a")
    (entry,) = snapcache.entries()
    entry.memory.write_bytes(entry.memory.read_bytes()[:-100])  # the header still parses
    events = Recorder()
    boot = _boot(image, "b", sink=events)
    assert boot["mode"] == "cold" and boot["snapshot"] is None
    assert snapcache.entries() == []
    (err,) = events.messages()  # one line
    assert err.startswith("warning: ")
    assert f"snapshot {entry.key[:12]}" in err and "truncated" in err and "booting b cold" in err
    _nothing_left(lv)


def test_a_failing_readiness_after_restore_boots_cold(
    lv: Libvirt, image: FileImage, fake_qemu: dict[str, list[str]]
) -> None:
    answers = iter([None, None, GuestError("broker probe: connection refused"), None])

    def check(_executor: object, _timeout: float) -> None:
        error = next(answers)
        if error is not None:
            raise error

    ready = {"a": snapshot.Readiness("ssh+broker", "v1", check)}
    _boot(image, "a", readiness=ready)  # cold (check 1), restored (check 2)
    ready = {"b": ready["a"]}
    boot = _boot(image, "b", readiness=ready)  # restored: check 3 fails -> cold (check 4)
    assert boot["mode"] == "cold"
    assert snapcache.entries() == []
    _nothing_left(lv)


def test_the_readiness_check_is_announced_as_progress_cold_and_restored(
    lv: Libvirt, image: FileImage, fake_qemu: dict[str, list[str]]
) -> None:
    """A workload's prepare can take minutes: its label is shown before each check, on the
    cold boot that saves the snapshot and on the restore after it."""
    checks: list[str] = []
    ready = {
        "a": snapshot.Readiness("ssh+x", "v1", lambda ex, t: checks.append("x"), "preparing x")
    }
    events = Recorder()
    assert _boot(image, "a", readiness=ready, sink=events)["mode"] == "restored"
    labels = [e.label for e in events if isinstance(e, Progress)]
    assert labels == ["a: preparing x", "a: preparing x"] and checks == ["x", "x"]
    _nothing_left(lv)


def test_disk_full_while_saving_leaves_no_snapshot(
    lv: Libvirt, image: FileImage, fake_qemu: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Libvirt, name: str, path: str) -> None:
        Path(path).write_bytes(b"LibvirtQemudPart")
        raise GuestError(f"saving guest {name} to {path}: No space left on device")

    monkeypatch.setattr(Libvirt, "save", full)
    boot = _boot(image, "a")
    assert boot["mode"] == "cold" and "No space left" in str(boot["note"])
    assert snapcache.entries() == []
    _nothing_left(lv)


def test_a_restore_that_hangs_is_stopped(lv: Libvirt, image: FileImage) -> None:
    released = threading.Event()

    class HangingLibvirt:
        def restore(self, path: str, name: str) -> None:
            released.wait(30)
            raise GuestError(f"restoring guest {name}: domain destroyed")

        def destroy(self, name: str) -> bool:
            released.set()
            return True

    with pytest.raises(snapshot.RestoreFailed, match=r"did not finish within 0\.5s"):
        snapshot._restore_within(HangingLibvirt(), Path("/x"), "kvmple-c1-a", 0.5)  # type: ignore[arg-type]
    # the hang was broken by destroying the half-restored domain, not by waiting it out
    assert released.is_set()


def test_a_snapshot_from_another_qemu_is_discarded(
    lv: Libvirt,
    image: FileImage,
    fake_qemu: dict[str, list[str]],
) -> None:
    _boot(image, "a")
    (entry,) = snapcache.entries()
    meta = entry.directory / snapcache.META
    data = json.loads(meta.read_text())
    data["fields"]["qemu"] = 6002000  # as if saved before a QEMU upgrade
    data["key"] = snapcache.key_of(data["fields"])
    meta.write_text(json.dumps(data))
    entry.directory.rename(entry.directory.with_name(data["key"]))
    events = Recorder()
    boot = _boot(image, "b", sink=events)  # saves a new one for this QEMU, drops the old one
    assert boot["saved_by_this_boot"] is True
    assert [e.key for e in snapcache.entries()] == [boot["snapshot"]]
    (err,) = events.messages()
    assert f"snapshot {data['key'][:12]} (qemu 6002000" in err
    _nothing_left(lv)


def test_default_is_snapshots_on_the_system_uri_unless_cold_boot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KVMPLE_COLD_BOOT", raising=False)
    assert snapshot.wanted("qemu:///system")
    assert not snapshot.wanted("test:///default")
    monkeypatch.setenv("KVMPLE_COLD_BOOT", "1")  # what --cold-boot sets
    assert not snapshot.wanted("qemu:///system")


def test_cold_boot_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kvmple.cli import build_parser, main

    monkeypatch.setenv("KVMPLE_COLD_BOOT", "0")  # recorded: restored after the test
    parser = build_parser()
    assert parser.parse_args(["vm", "up", "a=debian12-amqp", "--cold-boot"]).cold_boot
    assert not parser.parse_args(["vm", "up", "a=debian12-amqp"]).cold_boot
    # kvmple run --cold-boot reaches every boot of the campaign through the environment
    assert main(["run", "--cold-boot", str(tmp_path / "missing.yaml")]) != 0
    assert os.environ.get("KVMPLE_COLD_BOOT") == "1"

"""Run the Bochs VT-x lab host: bochsrc, the emulator process, its record, its console.

Bochs (Debian's ``bochs`` 2.7, ``bochs-bin``) emulates VT-x with Pause-Loop Exiting for the
models listed in host-notes.md; corei7_haswell_4770 calibrates its TSC correctly. Pitfalls
handled here (host-notes.md, "Emulated lab hosts"): Debian's build has no ``nogui``
display, so the rfb display is used with ``timeout=0`` -- it listens on TCP 5900+, so Bochs
runs in its own network namespace (``unshare --net``), where that port is unreachable from
the host and two lab hosts never collide; its built-in debugger would stop at a prompt, so
it starts with ``-rc`` holding ``c``; the guest's ACPI power-off ends Bochs with rc 1
(logged as a PANIC), which is the normal end; ~150k "RDMSR: Unknown register" lines are
silenced with ``error: action=ignore``; without a sound card on the host, the ALSA mixer
thread of Debian's build aborts at start ("buffer overflow detected"), hence the dummy sound
driver and no PC speaker.

Every lab host is recorded in ``state_dir()/lab-bochs/NAME.json`` (pid, owner pid, run
directory) before Bochs starts, so ``kvmple vm gc`` (reap_orphans) kills a Bochs whose
owner died (SIGKILL of kvmple) and removes its files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvmple import paths
from kvmple.errors import GuestError, HostError, UsageError
from kvmple.fsutil import write_atomic
from kvmple.run import start_detached, which

CPU_MODEL = "corei7_haswell_4770"  # VT-x with PLE in Bochs's VMX mask, TSC calibrates right
IPS = 10_000_000  # emulated instructions per emulated second (guest time follows this)
STAGES = ("Linux version", "userspace", "kvm_intel-loaded", "done")


def bochsrc(iso: Path, serial: Path, log: Path, cpus: int = 1, memory_mib: int = 512) -> str:
    """The bochsrc of a lab host (pure)."""
    cpu = f"model={CPU_MODEL}, count={cpus}, ips={IPS}, reset_on_triple_fault=0, ignore_bad_msrs=1"
    return f"""cpu: {cpu}
memory: guest={memory_mib}, host={memory_mib}
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
pci: enabled=1, chipset=i440fx
ata0-master: type=cdrom, path="{iso}", status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev="{serial}"
display_library: rfb, options="timeout=0"
clock: sync=none, time0=utc
sound: driver=dummy
speaker: enabled=0
log: {log}
panic: action=fatal
error: action=ignore
info: action=ignore
debug: action=ignore
"""


def records_dir() -> Path:
    path = paths.state_dir() / "lab-bochs"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class BochsHost:
    """A recorded Bochs lab host: ``pid`` of Bochs (its process group leader), ``owner_pid``
    of the kvmple process responsible for it (0 once ``lab up`` handed it over: detached),
    ``run_dir`` with bochsrc, console (serial.txt) and Bochs's log; ``started``: Unix time."""

    name: str
    pid: int
    owner_pid: int
    run_dir: str
    iso: str
    cpus: int
    started: float

    @property
    def serial(self) -> Path:
        return Path(self.run_dir) / "serial.txt"

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _record_path(name: str) -> Path:
    return records_dir() / f"{name}.json"


def save(host: BochsHost) -> None:
    write_atomic(_record_path(host.name), json.dumps(host.to_json(), indent=2) + "\n")


def load(name: str) -> BochsHost:
    path = _record_path(name)
    try:
        return BochsHost(**json.loads(path.read_text()))
    except FileNotFoundError:
        known = ", ".join(h.name for h in all_hosts()) or "none"
        raise UsageError(
            f"no Bochs lab host named {name!r} (known: {known})",
            hint="start one with 'kvmple lab up intel --name NAME'",
        ) from None
    except (ValueError, TypeError) as exc:
        raise HostError(f"lab record {path} is unreadable: {exc}", hint="remove it") from exc


def all_hosts() -> list[BochsHost]:
    hosts = []
    for path in sorted(records_dir().glob("*.json")):
        with contextlib.suppress(ValueError, TypeError, OSError):
            hosts.append(BochsHost(**json.loads(path.read_text())))
    return hosts


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_our_bochs(host: BochsHost) -> bool:
    """The recorded pid still runs Bochs on this lab host's run directory (pids are reused)."""
    try:
        argv = Path(f"/proc/{host.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"bochs" in a for a in argv) and any(host.run_dir.encode() in a for a in argv)


def start(name: str, iso: Path, cpus: int = 1) -> BochsHost:
    """Start Bochs on ``iso`` in the background (recorded first; see module docstring)."""
    for tool in ("bochs-bin", "unshare"):
        if which(tool) is None:
            raise HostError(f"{tool} not found", hint="apt-get install bochs bochsbios vgabios")
    if _record_path(name).exists():
        raise UsageError(
            f"a lab host named {name!r} exists", hint=f"'kvmple lab down {name}' or another --name"
        )
    run_dir = paths.state_dir() / "lab-bochs" / f"{name}.run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    rc = run_dir / "bochs.rc"
    rc.write_text("c\n")  # continue: the debugger of Debian's build would wait at a prompt
    config = run_dir / "bochsrc"
    config.write_text(bochsrc(iso, run_dir / "serial.txt", run_dir / "bochs.log", cpus))
    (run_dir / "serial.txt").touch()
    argv = ["unshare", "--net", "bochs-bin", "-q", "-f", str(config), "-rc", str(rc)]
    pid = start_detached(argv, log=run_dir / "bochs.out", cwd=run_dir)
    host = BochsHost(name, pid, os.getpid(), str(run_dir), str(iso), cpus, time.time())
    save(host)
    return host


def console(host: BochsHost) -> str:
    try:
        return host.serial.read_text(errors="replace")
    except OSError:
        return ""


def tail(host: BochsHost, lines: int = 15) -> str:
    return "\n".join(console(host).splitlines()[-lines:])


def wait_for(host: BochsHost, marker: str, timeout: float) -> float:
    """Seconds since start when ``marker`` appeared on the console; GuestError (with the
    console tail) when Bochs exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if marker in console(host):
            return round(time.time() - host.started, 1)
        if not _alive(host.pid):
            _reap_child(host.pid)
            if marker in console(host):
                return round(time.time() - host.started, 1)
            raise GuestError(
                f"lab host {host.name}: Bochs exited before {marker!r}; console tail:\n"
                + tail(host),
                hint=f"Bochs's own messages: {host.run_dir}/bochs.out and bochs.log",
            )
        if time.monotonic() > deadline:
            raise GuestError(
                f"lab host {host.name}: no {marker!r} after {timeout:.0f} s; console tail:\n"
                + tail(host),
                hint="the emulated host is stalled or very slow (a loaded host?)",
            )
        time.sleep(1.0)


def _reap_child(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(host: BochsHost) -> None:
    """Kill Bochs (its whole process group) if it still runs, remove run dir and record."""
    if _alive(host.pid) and _is_our_bochs(host):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(host.pid, signal.SIGKILL)
        for _ in range(50):
            _reap_child(host.pid)
            if not _alive(host.pid):
                break
            time.sleep(0.1)
    shutil.rmtree(host.run_dir, ignore_errors=True)
    _record_path(host.name).unlink(missing_ok=True)


def detach(host: BochsHost) -> BochsHost:
    """Hand the lab host over (``lab up`` returns; ``lab verify-ple``/``down`` end it)."""
    detached = BochsHost(**{**host.to_json(), "owner_pid": 0})  # type: ignore[arg-type]
    save(detached)
    return detached


def reap_orphans(include_detached: bool = False) -> list[str]:
    """Stop lab hosts whose owner died (names returned). A detached one (``lab up`` returned)
    keeps its console for ``lab verify-ple`` even after Bochs ended: only
    ``include_detached`` reaps it."""
    reaped = []
    for host in all_hosts():
        owner_gone = host.owner_pid != 0 and not _alive(host.owner_pid)
        if owner_gone or (include_detached and host.owner_pid == 0):
            stop(host)
            reaped.append(host.name)
    return reaped

"""Boot pinned guests through libvirt, wait for SSH, prove the placement, clean up always.

``boot_guests`` is the one entry point: every guest is recorded (registry) before anything
is created, started and waited for in parallel "waves" (see boot_waves), and its vCPU
affinity read back and compared with the spec. Whatever happens afterwards (normal exit,
exception, Ctrl-C, SIGTERM, which kvmple.cli turns into KeyboardInterrupt) every guest is
destroyed, its overlay and run directory deleted and its record forgotten. When this process
dies without cleaning up (SIGKILL, the OOM killer), its reaper process does it (vm/reaper.py);
if that was killed too, ``kvmple gc`` finds the records of the dead owner and reaps them.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvmple import events
from kvmple.console import ConsoleLog
from kvmple.errors import (
    ConfigError,
    GuestError,
    KvmpleError,
    UsageError,
)
from kvmple.events import Sink, Warn
from kvmple.host.kvmprobe import usable_accelerator
from kvmple.keys import installation_key
from kvmple.remote import SSHExecutor, free_port
from kvmple.vm import reaper, registry, snapshot
from kvmple.vm.domxml import domain_xml
from kvmple.vm.libvirt_backend import Libvirt, connect
from kvmple.vm.pinning import check_pinning, compare_affinity, read_host_cpus, summarize
from kvmple.vm.ready import wait_ssh
from kvmple.vm.spec import Accelerator, VMSpec
from kvmple.vm.threads import qemu_pid, thread_affinity, vcpu_threads

SYSTEM_URI = "qemu:///system"
_PORT_ATTEMPTS = 4


def default_accelerator() -> Accelerator:
    """What works here ("kvm" or "tcg"): the one decision, kvmprobe.usable_accelerator (the
    KVM boot probe, cached per host); asked only when needed."""
    return usable_accelerator()


@dataclass
class Guest:
    """A running guest kvmple started. ``executor`` runs commands in it over SSH."""

    spec: VMSpec
    record: registry.GuestRecord
    executor: SSHExecutor
    _lv: Libvirt = field(repr=False)
    readback: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds since boot_guests began
    detached: bool = False

    @property
    def name(self) -> str:
        return self.spec.domain_name

    @property
    def ssh_port(self) -> int:
        return self.record.ssh_port

    @property
    def console_log(self) -> Path:
        return Path(self.record.run_dir) / "console.log"

    @property
    def snapshot(self) -> str | None:
        """The key of the booted snapshot this guest was restored from; None: booted cold
        (readback["boot"], set by kvmple.vm.snapshot.bring_up)."""
        boot = self.readback.get("boot")
        if isinstance(boot, dict) and boot.get("mode") == "restored":
            return str(boot["snapshot"])
        return None

    def alive(self) -> bool:
        """True while the domain runs (a crashed or powered-off guest is gone: on_* destroy)."""
        return self._lv.is_running(self.name)

    def console_tail(self, n: int = 30) -> str:
        """The last ``n`` non-empty console lines ('' if there are none)."""
        return ConsoleLog(self.console_log).tail(n)

    def affinity(self) -> dict[int, tuple[int, ...]]:
        """Per vCPU, the host CPUs its QEMU thread may run on, read from the kernel.

        Cross-checked with libvirt's own read-back (``virsh vcpuinfo``); GuestError when the
        two disagree or the QEMU threads cannot be found.
        """
        from_libvirt = self._lv.vcpu_affinity(self.name)
        pid = qemu_pid(self.name)
        if pid is None:
            if self._lv.uri != SYSTEM_URI:  # e.g. test:///default has no processes
                return from_libvirt
            raise GuestError(f"guest {self.name}: QEMU pid file not found (guest died?)")
        tids = vcpu_threads(pid)
        from_kernel = thread_affinity(tids)
        if from_kernel != from_libvirt:
            raise GuestError(
                f"guest {self.name}: affinity from the kernel {from_kernel} differs from "
                f"libvirt's {from_libvirt}"
            )
        self.readback.update(  # update: "boot" (how the guest was started) stays
            {
                "qemu_pid": pid,
                "vcpu_threads": {str(k): v for k, v in tids.items()},
                "vcpu_affinity": {str(k): list(v) for k, v in from_kernel.items()},
            }
        )
        return from_kernel


def _check_specs(specs: Sequence[VMSpec], *, keep_smt_siblings: bool) -> None:
    if not specs:
        raise UsageError("no guests to boot")
    names = [s.domain_name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"two guests would be named {duplicates[0]}",
            hint="give every guest of a campaign its own role",
        )
    host = read_host_cpus()
    for spec in specs:
        check_pinning(spec, host, keep_smt_siblings=keep_smt_siblings)
        for path in (spec.image.qcow2, spec.image.kernel, spec.image.initrd):
            if not Path(path).is_file():
                raise ConfigError(
                    f"image {spec.image.name}: {path} is missing",
                    hint="rebuild it: kvmple image build ...",
                )


def boot_waves(specs: Sequence[VMSpec]) -> list[list[VMSpec]]:
    """Group guests into waves booted one after another; guests of a wave boot in parallel.

    A guest joins the current wave unless the wave's vCPUs would then outnumber the host CPUs
    they are pinned to. Booting overcommitted guests in parallel is far slower than one after
    the other: a vCPU spinning on a lock whose holder's vCPU thread is preempted burns its
    share (the lock-holder preemption PLE exists for). Two 2-vCPU TCG guests pinned to the
    same 2 host CPUs booted in parallel here showed RCU stalls and 31 s soft lockups and took
    minutes; one after the other each answers SSH in ~19 s.
    """
    waves: list[list[VMSpec]] = []
    for spec in specs:
        if waves and _fits(waves[-1] + [spec]):
            waves[-1].append(spec)
        else:
            waves.append([spec])
    return waves


def _fits(wave: Sequence[VMSpec]) -> bool:
    cpus = {cpu for spec in wave for pins in spec.vcpu_pins for cpu in pins}
    return sum(len(spec.vcpu_pins) for spec in wave) <= len(cpus)


class _Boot:
    """The state of one boot_guests call, shared by its worker threads."""

    def __init__(
        self,
        lv: Libvirt,
        ready_timeout: float,
        policy: snapshot.Policy | None = None,
        sink: Sink = events.discard,
    ) -> None:
        self.lv = lv
        self.sink = sink
        self.policy = policy or snapshot.Policy({}, use=False)
        self.ready_timeout = ready_timeout
        self.t0 = time.monotonic()
        self.key = installation_key().private
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[registry.GuestRecord] = []
        self.created: set[str] = set()  # domains this boot created: the only ones it destroys
        self.executors: list[SSHExecutor] = []

    def bring_up(self, spec: VMSpec) -> Guest:
        """Start ``spec``'s guest and wait until it is ready: from a booted snapshot when the
        policy allows, else cold (kvmple.vm.snapshot.bring_up)."""
        return snapshot.bring_up(self, spec, self.policy)

    def drop(self, guest: Guest) -> None:
        """Stop and forget one guest of this boot (a failed restore before a cold boot)."""
        guest.executor.close()
        if guest.name in self.created:
            self.lv.destroy(guest.name)
        with self.lock:
            self.created.discard(guest.name)
            self.records = [r for r in self.records if r.domain != guest.name]
            self.executors = [e for e in self.executors if e is not guest.executor]
        registry.forget(guest.record)
        reaper.disown(guest.name)

    def _record(self, spec: VMSpec, run_dir: Path) -> registry.GuestRecord:
        return registry.GuestRecord(
            domain=spec.domain_name,
            uri=self.lv.uri,
            role=spec.role,
            campaign_id=spec.campaign_id,
            image=spec.image.name,
            run_dir=str(run_dir),
            ssh_port=free_port(),
            ssh_user=spec.image.ssh_user,
            ssh_key=str(self.key),
            host_keys=tuple(spec.image.host_keys),
            owner_pid=os.getpid(),
            owner_start=registry.process_start_time(os.getpid()),
            detached=False,
            created=time.time(),
        )

    def start(
        self,
        spec: VMSpec,
        *,
        backing: Path | None = None,
        launch: Callable[[str, Path], None] | None = None,
    ) -> Guest:
        """Claim; overlay on ``backing`` (default: the image); ``launch`` or createXML it."""
        run_dir = registry.guests_dir() / spec.domain_name
        record = self._record(spec, run_dir)
        reaper.ensure()  # from here on, this process dying by any signal reaps the guest
        registry.claim(record)  # raises if the name is taken: then it is not ours to clean
        with self.lock:
            self.records.append(record)
        # We hold the record now, so a run directory of that name is an orphan of a crash.
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        overlay = run_dir / "overlay.qcow2"
        snapshot.make_overlay(Path(backing or spec.image.qcow2), overlay)
        console = run_dir / "console.log"
        for attempt in range(_PORT_ATTEMPTS):
            if self.stop.is_set():
                raise KeyboardInterrupt
            xml = domain_xml(spec, overlay=overlay, console_log=console, ssh_port=record.ssh_port)
            (run_dir / "domain.xml").write_text(xml)
            if self.lv.exists(spec.domain_name):
                raise GuestError(
                    f"a domain named {spec.domain_name} exists in {self.lv.uri} but kvmple has "
                    "no record of starting it: leaving it alone",
                    hint="pick another campaign id or role, or remove that domain yourself",
                )
            reaper.own(spec.domain_name, self.lv.uri)
            try:
                (launch or (lambda x, _: self.lv.create(x, spec.domain_name)))(xml, run_dir)
                with self.lock:
                    self.created.add(spec.domain_name)
                break
            except GuestError as exc:
                # Another process took the port between free_port() and QEMU's bind: retry.
                if "hostfwd" not in exc.message and "host forwarding" not in exc.message:
                    raise
                if attempt == _PORT_ATTEMPTS - 1:
                    raise GuestError(
                        f"guest {spec.domain_name}: no free SSH port after "
                        f"{_PORT_ATTEMPTS} tries ({exc.message})",
                        hint="something keeps grabbing local ports; retry",
                    ) from exc
                record = replace(record, ssh_port=free_port())
                registry.update(record)
                with self.lock:
                    self.records = [r for r in self.records if r.domain != record.domain]
                    self.records.append(record)
        executor = SSHExecutor(
            "127.0.0.1",
            record.ssh_port,
            record.ssh_user,
            self.key,
            record.host_keys,
            name=f"guest {spec.role}",
        )
        with self.lock:
            self.executors.append(executor)
        guest = Guest(spec, record, executor, self.lv)
        guest.timings["started_s"] = time.monotonic() - self.t0
        return guest

    def wait_ready(self, guest: Guest) -> None:
        """Wait until SSH answers and a command runs (vm/ready.py); GuestError with the
        console tail."""

        def alive() -> None:
            if not guest.alive():
                raise GuestError(
                    f"guest {guest.name} died while booting" + _tail_suffix(guest.console_tail(15)),
                    hint=f"libvirt's log: /var/log/libvirt/qemu/{guest.name}.log",
                )

        def timed_out(last: str) -> GuestError:
            return GuestError(
                f"guest {guest.name} did not answer SSH on 127.0.0.1:{guest.ssh_port} "
                f"within {self.ready_timeout:g}s ({last})" + _tail_suffix(guest.console_tail(15)),
                hint="is sshd enabled in the image and the NIC configured by DHCP? "
                "raise ready_timeout for slow (TCG) hosts",
            )

        deadline = time.monotonic() + self.ready_timeout
        wait_ssh(
            guest.executor, deadline=deadline, alive=alive, timed_out=timed_out, stop=self.stop
        )
        guest.timings["ssh_ready_s"] = time.monotonic() - self.t0

    def teardown(self) -> list[str]:
        """Destroy every guest this boot created and forget its records, in parallel; return
        what failed. A Ctrl-C/SIGTERM arriving meanwhile does not cut the cleanup short: it is
        finished first, then the interrupt is raised again."""
        interrupted = False
        while True:
            try:
                problems = self._teardown_once()
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt
        return problems

    def _teardown_once(self) -> list[str]:
        self.stop.set()
        for executor in self.executors:
            executor.close()
        problems: list[str] = []

        def remove(record: registry.GuestRecord) -> None:
            try:
                if record.domain in self.created:
                    self.lv.destroy(record.domain)
                registry.forget(record)
                reaper.disown(record.domain)
            except KvmpleError as exc:
                problems.append(f"{record.domain}: {exc.message}")

        if self.records:
            with ThreadPoolExecutor(len(self.records)) as pool:
                list(pool.map(remove, list(self.records)))
        return problems


def _tail_suffix(tail: str) -> str:
    return f"; console tail:\n{tail}" if tail else "; the console log is empty"


def verify_placement(guest: Guest) -> None:
    """Read the vCPU affinity back and fail when it differs from the spec."""
    actual = guest.affinity()
    problems = compare_affinity(guest.spec, actual)
    if problems:
        raise GuestError(
            f"guest {guest.name}: placement differs from the spec "
            f"({summarize(guest.spec.vcpu_pins)}): " + "; ".join(problems),
            hint="another tool may have re-pinned the QEMU threads; check 'virsh vcpupin'",
        )
    guest.readback.setdefault("vcpu_affinity", {str(k): list(v) for k, v in actual.items()})


def detach(guests: Sequence[Guest]) -> None:
    """Leave ``guests`` running after boot_guests exits (``kvmple vm up --detach``).

    Their records lose their owner, so only ``kvmple vm down`` (or ``gc --all``) stops them.
    """
    for guest in guests:
        record = replace(guest.record, detached=True, owner_pid=0, owner_start=None)
        registry.update(record)
        reaper.disown(guest.name)
        guest.record = record
        guest.detached = True


@contextmanager
def boot_guests(
    specs: Sequence[VMSpec],
    *,
    uri: str = SYSTEM_URI,
    ready_timeout: float,
    keep_smt_siblings: bool = False,
    snapshots: bool | None = None,
    readiness: Mapping[str, snapshot.Readiness] | None = None,
    sink: Sink = events.discard,
) -> Iterator[list[Guest]]:
    """Start ``specs`` (in parallel where they do not overcommit the host CPUs: boot_waves),
    wait for SSH, check placement, yield the guests in the order of ``specs``.

    On exit, whatever the reason, every guest is destroyed and its files and record removed
    (except guests passed to ``detach``). A clean-up that fails while another error is
    raised is a Warn to ``sink`` (the first error wins); otherwise it raises GuestError.

    ``snapshots``: start guests from booted snapshots (kvmple.vm.snapshot); None means yes
    on qemu:///system unless KVMPLE_COLD_BOOT=1 (snapshot.wanted).
    ``readiness`` (by role) says what a guest must reach beyond SSH before it counts as
    ready (and before it is saved); each guest's ``readback["boot"]`` says whether it was
    restored or booted cold, and from which key.
    """
    _check_specs(specs, keep_smt_siblings=keep_smt_siblings)
    with connect(uri) as lv:
        use = snapshot.wanted(uri) if snapshots is None else snapshots
        policy = snapshot.Policy(dict(readiness or {}), use=use)
        boot = _Boot(lv, ready_timeout, policy, sink)
        guests: list[Guest] = []
        try:
            with ThreadPoolExecutor(len(specs), thread_name_prefix="kvmple-boot") as pool:
                try:
                    # restored guests do not boot: all of them start at once
                    parallel = snapshot.all_cached(lv, specs, boot.policy)
                    for wave in [list(specs)] if parallel else boot_waves(specs):
                        futures = [pool.submit(boot.bring_up, s) for s in wave]
                        guests.extend(f.result() for f in futures)
                except BaseException:
                    boot.stop.set()  # let the other workers give up quickly
                    raise
            order = {spec.domain_name: i for i, spec in enumerate(specs)}
            guests.sort(key=lambda g: order[g.spec.domain_name])
            for guest in guests:
                verify_placement(guest)
            yield guests
        finally:
            kept = {g.name for g in guests if g.detached}
            boot.records = [r for r in boot.records if r.domain not in kept]
            problems = boot.teardown()
            if problems and sys.exc_info()[0] is not None:
                sink(Warn("cleanup failed for " + "; ".join(problems) + " (run 'kvmple gc')"))
            elif problems:
                raise GuestError(
                    "cleanup failed for " + "; ".join(problems),
                    hint="run 'kvmple gc' to retry the cleanup",
                )

"""A tiny KVM guest run straight through /dev/kvm ioctls: one real-mode vCPU spinning on
``pause; jmp`` (bytes ``f3 90 eb fc``) with RFLAGS.IF=1, for a given wall time.

Why this guest: Pause-Loop Exiting fires only for PAUSE at CPL 0 (Intel SDM vol. 3C, 25.1.3
"PAUSE-loop exiting"), and real mode is CPL 0; spinning with IF=1 lets host interrupts
leave the guest (an IF=0 spin hung an emulated host once, host-notes.md). No QEMU, no
firmware: the guest is four bytes at guest-physical 0x1000, run until a timer signal
interrupts KVM_RUN.

Constants and struct layouts: include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h
(Linux 6.1). While the VM exists, KVM's per-VM statistics are read from debugfs
(``/sys/kernel/debug/kvm/<pid>-<vm fd>/``, virt/kvm/kvm_main.c kvm_create_vm_debugfs).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvmple.errors import HostError
from kvmple.host.kvmstats import read_stat_dir

KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _ioc(0, 0x00, 0)
KVM_CREATE_VM = _ioc(0, 0x01, 0)
KVM_GET_VCPU_MMAP_SIZE = _ioc(0, 0x04, 0)
KVM_CREATE_VCPU = _ioc(0, 0x41, 0)
KVM_SET_USER_MEMORY_REGION = _ioc(1, 0x46, 32)  # struct kvm_userspace_memory_region
KVM_SET_TSS_ADDR = _ioc(0, 0x47, 0)
KVM_RUN = _ioc(0, 0x80, 0)
KVM_SET_REGS = _ioc(1, 0x82, 144)  # struct kvm_regs: 18 x u64
KVM_GET_SREGS = _ioc(2, 0x83, 312)  # struct kvm_sregs
KVM_SET_SREGS = _ioc(1, 0x84, 312)

KVM_EXIT_INTR = 10
EXIT_NAMES = {2: "IO", 5: "HLT", 6: "MMIO", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 17: "INTERNAL_ERROR"}

PAUSE_LOOP = bytes.fromhex("f390ebfc")  # pause; jmp $-2
# The holder: "cmp byte [0x3000], 0; je $-7; hlt" -- busy (no PAUSE) until the release flag
# at 0x3000 is set, then HLT, which without an in-kernel irqchip returns KVM_EXIT_HLT.
HOLD_LOOP = bytes.fromhex("803e00300074f9f4")
HOLD_ADDRESS = 0x2000
RELEASE_FLAG = 0x3000
CODE_ADDRESS = 0x1000
MEMORY_SIZE = 0x10000  # 64 KiB at guest-physical 0
TSS_ADDRESS = 0xFFFBD000  # where QEMU puts it; VMX without unrestricted guest needs one


class _Stop(Exception):
    """Raised by the timer signal handler to end a blocking KVM_RUN (PEP 475 retries EINTR
    unless the handler raises)."""


@dataclass(frozen=True)
class SpinResult:
    """One run of the PAUSE-loop guest: ``seconds`` of wall time, how KVM_RUN ended
    (``exit``: "INTR" after the timer, else KVM's exit name), the vCPU thread's id (the
    ``common_pid`` of its kvm_exit events) and KVM's per-VM statistics (debugfs, read while
    the VM existed; empty when debugfs is not mounted)."""

    seconds: float
    exit: str
    vcpu_tid: int
    kvm_stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "seconds": self.seconds,
            "exit": self.exit,
            "vcpu_tid": self.vcpu_tid,
            "kvm_stats": dict(self.kvm_stats),
        }


def _ioctl(fd: int, request: int, arg: int | bytes | bytearray = 0) -> int:
    try:
        result = fcntl.ioctl(fd, request, arg)
        return result if isinstance(result, int) else 0  # buffers are copied, not returned
    except OSError as exc:
        raise HostError(f"/dev/kvm ioctl {request:#x} failed: {exc}") from exc


def _real_mode_at(vcpu: int, address: int) -> None:
    """CS base 0 / selector 0 (real mode, CPL 0), RIP=address, RFLAGS=IF|bit 1."""
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("<Q", sregs, 0, 0)  # cs.base (struct kvm_segment: base u64 first)
    struct.pack_into("<H", sregs, 12, 0)  # cs.selector
    _ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = [0] * 18
    regs[16] = address  # rip
    regs[17] = 0x202  # rflags: IF and the always-one bit 1
    _ioctl(vcpu, KVM_SET_REGS, struct.pack("<18Q", *regs))


def read_vm_stats(debugfs: Path, vm_fd: int) -> dict[str, int]:
    """Every integer statistic in this process's VM ``vm_fd`` (sums over its vCPUs)."""
    return read_stat_dir(debugfs / "kvm" / f"{os.getpid()}-{vm_fd}")


@contextlib.contextmanager
def _timer(seconds: float) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def spin_pause(
    seconds: float,
    device: Path = Path("/dev/kvm"),
    debugfs: Path = Path("/sys/kernel/debug"),
    holder: bool = False,
) -> SpinResult:
    """Run the PAUSE-loop guest for ``seconds`` of wall time (main thread only: SIGALRM).

    ``holder``: a second vCPU (its own thread) busy-loops without PAUSE meanwhile, like a
    lock holder; on a host with fewer CPUs than vCPUs it is preempted, so a PLE exit of the
    spinner has a preempted vCPU for kvm_vcpu_on_spin -> yield_to. (KVM 6.1 keeps no
    statistic of that path: directed_yield_attempted/successful count the paravirtual
    sched_yield hypercall, arch/x86/kvm/x86.c kvm_sched_yield.)

    Raises HostError when /dev/kvm cannot be opened or an ioctl fails, and when the guest
    leaves KVM_RUN for any reason other than the timer (its exit name is in the message).
    """
    try:
        kvm = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(f"cannot open {device}: {exc}", hint="is a KVM module loaded?") from exc
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, kvm)
        vm = _ioctl(kvm, KVM_CREATE_VM, 0)
        stack.callback(os.close, vm)
        with contextlib.suppress(HostError):  # only VMX without unrestricted guest needs it
            _ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDRESS - (1 << 32))  # C int; KVM takes u32
        memory = mmap.mmap(-1, MEMORY_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        stack.callback(memory.close)
        memory[CODE_ADDRESS : CODE_ADDRESS + len(PAUSE_LOOP)] = PAUSE_LOOP
        memory[HOLD_ADDRESS : HOLD_ADDRESS + len(HOLD_LOOP)] = HOLD_LOOP
        address = stack.enter_context(_buffer_address(memory))
        region = struct.pack("<IIQQQ", 0, 0, 0, MEMORY_SIZE, address)
        _ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
        vcpu = _ioctl(vm, KVM_CREATE_VCPU, 0)
        stack.callback(os.close, vcpu)
        size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        stack.callback(run.close)
        _real_mode_at(vcpu, CODE_ADDRESS)
        hold = _start_holder(stack, vm, size) if holder else None
        if hold is not None:  # also on errors: release and join before fds and memory close
            stack.callback(hold.join, 30.0)
            stack.callback(memory.__setitem__, RELEASE_FLAG, 1)
        start = time.monotonic()
        exit_name = _run_until_timer(vcpu, run, seconds)
        elapsed = round(time.monotonic() - start, 3)
        if hold is not None:
            memory[RELEASE_FLAG] = 1
            hold.join(timeout=max(30.0, 10 * seconds))
            if hold.is_alive():
                raise HostError("the holder vCPU did not stop after its release flag was set")
        stats = read_vm_stats(debugfs, vm)
    if exit_name != "INTR":
        raise HostError(f"the PAUSE-loop guest left KVM_RUN with exit {exit_name}")
    return SpinResult(elapsed, exit_name, threading.get_native_id(), stats)


def _start_holder(stack: contextlib.ExitStack, vm: int, size: int) -> threading.Thread:
    vcpu = _ioctl(vm, KVM_CREATE_VCPU, 1)
    stack.callback(os.close, vcpu)
    run = mmap.mmap(vcpu, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    _real_mode_at(vcpu, HOLD_ADDRESS)

    def hold() -> None:
        while True:  # until HLT (released) or another exit
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            (reason,) = struct.unpack_from("<I", run, 8)
            if reason != KVM_EXIT_INTR:
                return

    thread = threading.Thread(target=hold, name="kvmple-holder-vcpu", daemon=True)
    thread.start()
    stack.callback(run.close)
    return thread


def _run_until_timer(vcpu: int, run: mmap.mmap, seconds: float) -> str:
    try:
        with _timer(seconds):
            while True:
                fcntl.ioctl(vcpu, KVM_RUN, 0)
                (reason,) = struct.unpack_from("<I", run, 8)  # kvm_run.exit_reason
                if reason != KVM_EXIT_INTR:
                    return EXIT_NAMES.get(reason, str(reason))
    except _Stop:
        return "INTR"


@contextlib.contextmanager
def _buffer_address(memory: mmap.mmap) -> Iterator[int]:
    """The user-space address of an anonymous mmap (ctypes only reads the pointer; the view
    is dropped before the mmap closes, which refuses to close while it is exported)."""
    view = ctypes.c_char.from_buffer(memory)
    try:
        yield ctypes.addressof(view)
    finally:
        del view

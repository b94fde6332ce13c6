"""Finding QEMU's vCPU threads in /proc and reading their affinity from the kernel."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kvmple.errors import GuestError
from kvmple.run import run
from kvmple.vm.threads import qemu_pid, thread_affinity, vcpu_threads


def _fake_proc(root: Path, pid: int, threads: dict[int, str]) -> Path:
    for tid, comm in threads.items():
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "comm").write_text(comm + "\n")
    return root


def test_multi_threaded_tcg(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path,
        100,
        {100: "qemu-system-x86", 101: "IO mon_iothread", 105: "CPU 1/TCG", 104: "CPU 0/TCG"},
    )
    assert vcpu_threads(100, proc) == {0: 104, 1: 105}


def test_kvm_threads(tmp_path: Path) -> None:
    assert vcpu_threads(7, _fake_proc(tmp_path, 7, {8: "CPU 0/KVM"})) == {0: 8}


def test_single_threaded_tcg_is_refused(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 100, {100: "qemu-system-x86", 101: "ALL CPUs/TCG"})
    with pytest.raises(GuestError, match="single-threaded TCG"):
        vcpu_threads(100, proc)


def test_qemu_pid(tmp_path: Path) -> None:
    (tmp_path / "kvmple-a-b.pid").write_text("4242")
    assert qemu_pid("kvmple-a-b", tmp_path) == 4242
    assert qemu_pid("kvmple-missing", tmp_path) is None


def test_thread_affinity_reads_the_kernel() -> None:
    """A real thread pinned to one CPU: the kernel's answer comes back, not the request."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    ready = threading.Event()
    done = threading.Event()
    tid: list[int] = []

    def worker() -> None:
        tid.append(threading.get_native_id())
        os.sched_setaffinity(0, {cpu})
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        ready.wait(10)
        assert thread_affinity({0: tid[0]}) == {0: (cpu,)}
    finally:
        done.set()
        thread.join()
    gone = int(run(["sh", "-c", "echo $$"], timeout=10).stdout)  # an exited, reaped process
    with pytest.raises(GuestError, match="vanished"):
        thread_affinity({0: gone})

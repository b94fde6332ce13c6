"""The raw /dev/kvm PAUSE-loop guest (kvmple.host.kvmrun) on this host's own KVM.

On the development host /dev/kvm is kvm_pvm, which runs this real-mode guest (host-notes:
a raw ioctl test passes there); the Bochs lab host runs it on a real kvm_intel with PLE
(tests/lab). Here it proves the ioctl plumbing: VM, memory slot, vCPU registers, KVM_RUN
stopped by the timer, and the two-vCPU variant whose holder halts when released.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvmple.host.kvmrun import spin_pause
from tests.support import need


def test_pause_loop_guest_runs_until_the_timer() -> None:
    need(Path("/dev/kvm").exists() and os.access("/dev/kvm", os.R_OK | os.W_OK), "no /dev/kvm")
    result = spin_pause(0.3)
    assert result.exit == "INTR" and result.seconds >= 0.3
    assert result.vcpu_tid > 0


def test_holder_vcpu_is_released() -> None:
    need(Path("/dev/kvm").exists() and os.access("/dev/kvm", os.R_OK | os.W_OK), "no /dev/kvm")
    result = spin_pause(0.3, holder=True)
    assert result.exit == "INTR"

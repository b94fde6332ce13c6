"""Lab hosts: emulated bare-metal machines where kvmple's KVM and host-kernel paths run for
real (``kvmple lab``).

- ``amd``: QEMU TCG with emulated AMD-V (real kvm_amd, no PLE: TCG has no pause filter).
  A lab host is just a host: reachable over SSH on 127.0.0.1 with the installation key and a
  pinned host key, with kvmple itself installed inside (``kvmple`` on its PATH).
- ``intel``: Bochs with emulated VT-x including Pause-Loop Exiting (real kvm_intel with PLE;
  slow, for functional truth, never for performance figures).
"""

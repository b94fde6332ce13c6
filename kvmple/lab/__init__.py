"""Lab hosts: emulated bare-metal machines where kvmple's KVM and host-kernel paths run for
real (``kvmple lab``). ``intel``: Bochs with emulated VT-x including Pause-Loop Exiting (real
kvm_intel with PLE; slow, for functional truth, never for performance figures).
"""

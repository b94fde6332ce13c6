"""kvmple: validate kernel patches by driving real QEMU/KVM guests."""

__version__ = "0.1.0"

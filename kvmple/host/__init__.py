"""Host capabilities and host knobs: CPU and KVM facts, topology, the KVM boot probe,
``kvmple doctor`` and PLE switching (``kvmple ple``).

Everything that reads the host goes through a :class:`kvmple.host.seam.HostSeam` (sysfs and
procfs roots, the module loader, the running-VM lister) so the full logic also runs against
the fake Intel/AMD/no-PLE/kvm_pvm trees of tests/fixtures/fake_host.py.
"""

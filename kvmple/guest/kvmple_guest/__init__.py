"""kvmple's guest programs (kvmple-perftest, kvmple-spin) and their wire protocol with the host.

Shipped as a directory next to the programs' thin executables (``/opt/kvmple/bin/kvmple_guest``
in a guest; ``kvmple/guest/kvmple_guest`` in the source tree, where the host imports
``protocol``). Everything here runs in the guest's own /usr/bin/python3 (Debian 12: 3.11)
with the standard library and python3-amqp only, so modules import each other relatively and
never import kvmple.
"""

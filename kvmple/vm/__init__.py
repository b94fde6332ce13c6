"""Pinned SMP guests through libvirt: spec -> domain XML -> boot, SSH, placement read-back,
cleanup whatever happens (see lifecycle.boot_guests)."""

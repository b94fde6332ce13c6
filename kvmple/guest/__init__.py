"""What kvmple ships into guests: each program's executable (``kvmple-perftest``,
``kvmple-spin``: a few lines that run ``kvmple_guest.<module>.main``) and the ``kvmple_guest``
package next to them. The directory is copied as it is (image recipes' ``guest_programs`` at
build time, ``kvmple.workloads.programs.ensure_programs`` at run time; the file list is
``kvmple.image.guestfiles.shipped``), so on the host the programs also run straight from
here. The host reads the programs' output with ``kvmple_guest.protocol``.
"""

"""The kernel patch pipeline: series -> apply -> build -> boot-test -> install.

- ``series``    the patches/<name>/series.yaml manifest model and lookup
- ``inputs``    the one input-kind detector (manifest, mbox, diff, quilt, format-patch, git)
- ``seriesinput`` open any input as a series (a manifest made from its patches if need be)
- ``mailseries``  decode mail (email) and pick the series' mails (b4): revision, order, trailers
- ``sources``   materialise a series' patches (quilt dir, mbox, format-patch files, git, lore)
- ``tree``      facts about a kernel source tree (version, git or not, clean or not)
- ``upstream``  decide whether a series is already in a tree, and say on what evidence
- ``apply``     apply into a fresh git worktree or a hard-linked copy, per-patch status
- ``build``     base config + fragments, olddefconfig, fragment survival check, make
- ``initramfs`` a minimal busybox initramfs for the boot gate (pure Python cpio writer)
- ``boottest``  boot the built kernel in QEMU, pass only on user space + matching release
- ``install``   plan a host install (not verified on hardware)
"""

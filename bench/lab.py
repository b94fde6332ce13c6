#!/usr/bin/env python3
"""Benchmark of the lab hosts (issues 13 and 14): prints the stage times of each.

- amd (bench/lab_amd.py): QEMU TCG with emulated AMD-V: lab host up to SSH + kvm_amd, the
  lab-smoke campaign with nested KVM guests inside it, a kvm_amd reload with read-back;
- kernel (bench/lab_kernel.py): an amd lab host, the kvmple-built lab kernel installed and
  booted once, the campaign resumed on it, and the panic fallback (exit 13);
- intel (bench/lab_intel.py): Bochs with emulated VT-x + PLE: start -> kvm_intel loaded ->
  the PLE verification's verdict, with its counts per setting.

All of it is emulated: these are never hardware figures.

    .venv/bin/python bench/lab.py [amd|kernel|intel]   (as root; default: all three)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab_amd
import lab_intel
import lab_kernel

if __name__ == "__main__":
    kinds = sys.argv[1:2] or ["amd", "kernel", "intel"]
    sys.argv = sys.argv[:1]  # the parts take their own options only when run directly
    for kind in kinds:
        print(f"== lab host {kind} (emulated figures, not hardware figures)", flush=True)
        {"amd": lab_amd.main, "kernel": lab_kernel.main, "intel": lab_intel.main}[kind]()

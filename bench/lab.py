#!/usr/bin/env python3
"""Benchmark of the lab hosts (issues 13 and 14): prints the stage times of both.

- amd (bench/lab_amd.py): QEMU TCG with emulated AMD-V: lab host up to SSH + kvm_amd, the
  lab-smoke campaign with nested KVM guests inside it, a kvm_amd reload with read-back;
- intel (bench/lab_intel.py): Bochs with emulated VT-x + PLE: start -> kvm_intel loaded ->
  the PLE verification's verdict, with its counts per setting.

All of it is emulated: these are never hardware figures.

    .venv/bin/python bench/lab.py [amd|intel]      (as root; default: both, amd first)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab_amd
import lab_intel

if __name__ == "__main__":
    kinds = sys.argv[1:2] or ["amd", "intel"]
    sys.argv = sys.argv[:1]  # the parts take their own options only when run directly
    for kind in kinds:
        print(f"== lab host {kind} (emulated figures, not hardware figures)", flush=True)
        {"amd": lab_amd.main, "intel": lab_intel.main}[kind]()

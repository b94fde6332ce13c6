"""The Bochs lab host's console protocol: the in-lab program (kvmple.commands.lab_inner)
prints one line per step and one JSON result line, each behind its marker; the outer host
(kvmple.lab.bochs_verify) reads them from the serial console log."""

RESULT_MARK = "KVMPLE-LAB-RESULT"
STEP_MARK = "KVMPLE-LAB-STEP"

"""The Bochs lab host's console protocol: the in-lab program (kvmple.commands.lab_inner)
prints one line per step and one JSON result line, each behind its marker; the outer host
(kvmple.lab.bochs_verify) reads them from the serial console log and validates the result
as ``kvmple.lab.result.LabResult``.

Standard library only: the in-lab program imports this module inside the Bochs lab host,
whose initramfs ships only what the in-lab program imports (lab/bochs_media.py), and
pydantic is not part of it."""

RESULT_MARK = "KVMPLE-LAB-RESULT"
STEP_MARK = "KVMPLE-LAB-STEP"

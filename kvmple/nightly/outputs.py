"""What each night step hands the later steps (and the summary): one frozen model per step.

A step returns its model; ``state.json`` keeps it as a JSON object under the step's
``outputs`` (the same keys as before these models existed, so earlier nights still load),
next to the framework's own ``first_started``. Later steps read it back with
``NightState.outputs_of(step, Model)``, which validates it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, JsonValue


class StepOutputs(BaseModel):
    """Base of the step outputs: frozen; keys a model does not know are ignored on reading
    (``first_started`` is the framework's, not the step's)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_dict(self) -> dict[str, JsonValue]:
        """The JSON object stored in state.json: the keys the step set (paths as strings)."""
        return self.model_dump(mode="json", exclude_unset=True)


class FetchOutputs(StepOutputs):
    tree: str  # tree.path or tree.url as configured
    ref: str
    commit: str  # the full hash the ref resolved to
    subject: str
    source: Path  # the checkout at ``commit`` (the tree itself or the cached clone)


class ApplyOutputs(StepOutputs):
    tree: Path  # what the build step builds: the patched worktree, or the fetched tree
    series: str | None = None  # None: no series configured
    method: str | None = None
    counts: dict[str, int] = {}  # patches per apply status ("applied", "already upstream", ...)
    branch: str | None = None
    revision: int | None = None
    dropped: tuple[str, ...] = ()
    worktree: Path | None = None  # the worktree apply created (removed after the night)


class BuildOutputs(StepOutputs):
    release: str
    image: Path
    image_sha256: str
    config_sha256: str | None = None
    seconds: float | None = None  # wall time of configure + make
    ccache: bool | None = None
    log: Path | None = None
    out: Path  # the build directory (reused night after night)
    kept: Path | None = None  # this night's copy of bzImage, .config and the manifest


class BootOutputs(StepOutputs):
    release: str  # uname -r in the booted guest
    accel: str  # kvm or tcg
    seconds_to_userspace: float
    console: Path


class InstallOutputs(StepOutputs):
    release: str
    plan: tuple[str, ...] = ()  # the install steps, rendered
    plan_refused: str | None = None  # why no plan could be made
    installed: str | None = None  # the release installed (set just before the reboot)


class CampaignOutputs(StepOutputs):
    campaign_id: str
    playbook: str
    playbook_sha256: str
    ok: int  # runs stored ok (this attempt and earlier ones)
    planned: int | None = None  # None: completed before an interruption
    new_ok: int | None = None
    running_kernel: str
    kernel_under_test: str | None = None  # None: no build step output
    first_started: float | None = None
    log: Path


class CompareOutputs(StepOutputs):
    candidate: str
    baseline_campaign: str | None = None  # None: the first night (candidate is the baseline)
    baseline_night: str | None = None  # None: named in the config
    outcome: str | None = None  # results.compare's outcome
    cell_verdicts: tuple[str, ...] = ()
    threshold: float | None = None
    differences: tuple[str, ...] = ()  # how the two campaigns' hosts differ
    details: str  # markdown file name in the night directory
    junit_cases: str  # JUnit file name in the night directory

"""Execute a campaign: the plan's blocks, each with its host knob setting and one boot of
the guests, every run stored atomically as soon as it ends.

Crash safety comes from the store: a run is either stored whole (ok or failed) or not at
all, and ``--resume ID`` re-derives the same plan from the stored playbook text and seed and
skips every run whose key has an ok record. Every resource (PLE setting, guests, load
workloads) is a context manager on one ExitStack, so Ctrl-C and SIGTERM clean up too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from kvmple import __version__, events, paths
from kvmple.campaign.execute import execute
from kvmple.campaign.hostfit import host_fit
from kvmple.campaign.model import CampaignOptions, CampaignOutcome, HostFacts
from kvmple.campaign.plan import UNAVAILABLE, build_plan
from kvmple.campaign.playbook import LoadedPlaybook, Playbook, parse_playbook
from kvmple.errors import CampaignError, HostError, Interrupted, KvmpleError
from kvmple.events import Sink, Warn
from kvmple.host import knobs
from kvmple.host.doctor import diagnose
from kvmple.host.seam import real_seam
from kvmple.host.topology import read_mem_available_mib
from kvmple.results import CampaignMeta, Store, open_store
from kvmple.results.records import CellValue
from kvmple.results.report import default_report_path, load_analysis, render, write_report
from kvmple.workloads import measured_workload

__all__ = ["CampaignOptions", "CampaignOutcome", "campaign_report", "run_campaign"]

log = logging.getLogger("kvmple.campaign")


def _read_host(factors: Iterable[str] = (), *, probe_kvm: bool = True) -> HostFacts:
    """The host's facts, with which of the registry's knobs and of ``factors`` (knobs named by
    what they change, e.g. kvm.halt_poll_ns) it cannot provide."""
    seam = real_seam()
    report = diagnose(seam=seam, probe_kvm=probe_kvm)
    if not report.can_run:
        raise HostError(
            f"kvmple cannot run on this host: {report.reason}",
            hint=report.advice or "run 'kvmple doctor' for details",
        )
    try:
        cmdline = Path("/proc/cmdline").read_text().strip()
    except OSError:
        cmdline = ""
    facts = {
        "hostname": os.environ.get("KVMPLE_HOSTNAME") or socket.gethostname(),  # fleet tests
        "cpu_model": report.cpu.model_name,
        "cpu_vendor": report.cpu.vendor,
        "kernel_release": report.kernel,
        "cmdline": cmdline,
        "doctor_verdict": report.verdict,
        "accelerator": report.accelerator,
        "kvm_module": report.kvm_module.name if report.kvm_module else None,
        "ple_basis": report.ple_basis,
        "machine": platform.machine(),
    }
    unavailable = knobs.unavailable(
        dict.fromkeys([*knobs.REGISTRY, *factors]),
        seam,
        accelerator=report.accelerator,
        host_reason=report.reason,
    )
    return HostFacts(
        accelerator=report.accelerator,
        verdict=report.verdict,
        reason=report.reason,
        kvm_module=report.kvm_module.name if report.kvm_module else None,
        unavailable_knobs=unavailable,
        facts=facts,
        online_cpus=report.topology.online,
        mem_available_mib=read_mem_available_mib(),
    )


def read_host_for_dry_run(factors: Iterable[str] = ()) -> HostFacts:
    """The host facts without booting the KVM probe (a cached result only)."""
    return _read_host(factors, probe_kvm=False)


def check_host_fit(playbook: Playbook, host: HostFacts, allow_unavailable: bool) -> None:
    """Refuse (HostError, nothing created) when the host misses a requirement other than an
    allowed-to-be-unavailable factor; every unmet requirement is named at once. Factors
    alone are left to _unavailable_factors (CampaignError with the --allow-unavailable hint)."""
    unmet = host_fit(playbook, host)
    hard = [u for u in unmet if not u.factor]
    if not hard:
        return
    listed = hard + [u for u in unmet if u.factor and not allow_unavailable]
    raise HostError(
        f"this host does not fit playbook {playbook.name!r}, nothing was created: "
        + "; ".join(u.describe() for u in listed),
        hint="change the playbook's pin/memory_mib for this host, or run it on one that fits "
        "('kvmple run --dry-run PLAYBOOK' lists every requirement)",
    )


def _unavailable_factors(playbook: Playbook, host: HostFacts, allow: bool) -> dict[str, str]:
    """The playbook's factors this host cannot provide, with why; CampaignError unless
    ``allow`` (--allow-unavailable)."""
    missing = {
        f.knob: host.unavailable_knobs[f.knob]
        for f in playbook.factors
        if f.knob in host.unavailable_knobs
    }
    if missing and not allow:
        knob, reason = next(iter(missing.items()))
        where = knobs.get(knob).provider_hint
        raise CampaignError(
            f"this host cannot provide the factor {knob!r}: {reason}",
            hint="rerun with --allow-unavailable to run the other axes and record the factor "
            "as unavailable (nothing is faked)" + (f", or {where}" if where else ""),
        )
    return missing


def _campaign_id(name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    # a random tail: fleet hosts starting in the same second write to one shared store
    return f"{name[:18].rstrip('-')}-{stamp}-{secrets.token_hex(2)}"


@contextlib.contextmanager
def _campaign_log(campaign_id: str) -> Iterator[Path]:
    directory = paths.data_dir() / "campaigns" / campaign_id
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "campaign.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield path
    finally:
        log.removeHandler(handler)
        handler.close()


def run_campaign(
    loaded: LoadedPlaybook | None,
    options: CampaignOptions,
    *,
    resume_id: str | None = None,
    sink: Sink = events.discard,
) -> CampaignOutcome:
    """Run a new campaign from ``loaded``, or continue ``resume_id``, reporting progress,
    notes and warnings to ``sink`` (kvmple.events)."""
    if loaded is not None and loaded.playbook.workload_axis:
        raise CampaignError(
            f"{loaded.source}: workload_axis makes one campaign per workload; this runs one",
            hint="'kvmple run PLAYBOOK' runs them in turn; or list one workload in the playbook",
        )
    factors = [f.knob for f in loaded.playbook.factors] if loaded else []
    host = _read_host(factors)
    if resume_id is None and loaded is not None:
        check_host_fit(loaded.playbook, host, options.allow_unavailable)  # before the store
    with open_store(options.db_url) as store:
        if resume_id is not None:
            meta, loaded = _resume(store, resume_id, host)
            unavailable = meta.unavailable()
        else:
            assert loaded is not None
            unavailable = _unavailable_factors(loaded.playbook, host, options.allow_unavailable)
            meta = _new_campaign(store, loaded, host, unavailable)
        playbook = loaded.playbook
        plan = build_plan(playbook, unavailable)
        outcome = CampaignOutcome(meta.id, planned=len(plan.runs), db_url=options.db_url)
        with _campaign_log(meta.id) as log_path:
            outcome.log_path = log_path
            log.info(
                "campaign %s: %s, %d planned runs, host %s",
                meta.id,
                playbook.name,
                len(plan.runs),
                host.facts,
            )
            for knob, reason in unavailable.items():
                sink(Warn(f"factor {knob}: unavailable on this host ({reason}); recorded as such"))
            start = time.monotonic()
            store.set_status(meta.id, "running")
            try:
                execute(
                    store,
                    meta=meta,
                    playbook=playbook,
                    plan=plan,
                    host=host,
                    outcome=outcome,
                    sink=sink,
                )
            except KeyboardInterrupt:
                store.set_status(meta.id, "interrupted")
                log.info("interrupted")
                raise Interrupted(
                    f"campaign {meta.id} interrupted after {outcome.ok} new runs; guests and "
                    "host knobs were cleaned up",
                    hint=f"continue with: kvmple run --resume {meta.id}",
                ) from None
            except KvmpleError as exc:
                store.set_status(meta.id, "failed")
                log.error("failed: %s", exc.message)
                exc.hint = (exc.hint + "; " if exc.hint else "") + (
                    f"stored runs are kept: kvmple run --resume {meta.id} continues"
                )
                raise
            finally:
                outcome.wall_seconds = time.monotonic() - start
            store.set_status(meta.id, "complete")
            log.info("complete: %s", outcome.summary())
        return outcome


def _new_campaign(
    store: Store, loaded: LoadedPlaybook, host: HostFacts, unavailable: dict[str, str]
) -> CampaignMeta:
    playbook = loaded.playbook

    measured = measured_workload(playbook.workloads[playbook.measured_role].name)
    unit = next((m.unit for m in measured.metrics if m.name == measured.primary), "")
    axes: dict[str, list[CellValue]] = {}
    for factor in playbook.factors:
        axes[factor.knob] = [UNAVAILABLE] if factor.knob in unavailable else list(factor.values)
    for name, axis in playbook.axes.items():
        axes[name] = list(axis.values)
    meta = CampaignMeta(
        id=_campaign_id(playbook.name),
        name=playbook.name,
        playbook_hash=loaded.sha256,
        playbook_text=loaded.text,
        created=time.time(),
        status="running",
        host={**host.facts},
        kvmple_version=__version__,
        seed=playbook.order.seed,
        axes=axes,
        primary_metric=measured.primary,
        metric_unit=unit,
        notes={
            "unavailable": {**unavailable},
            "source": loaded.source,
            "reference": playbook.reference,
        },
    )
    store.create_campaign(meta)
    return meta


def _resume(store: Store, campaign_id: str, host: HostFacts) -> tuple[CampaignMeta, LoadedPlaybook]:
    meta = store.campaign(campaign_id)
    if meta.status == "complete":
        raise CampaignError(
            f"campaign {campaign_id} is already complete",
            hint=f"see its results with: kvmple report {campaign_id}",
        )
    loaded = parse_playbook(meta.playbook_text, f"campaign {campaign_id} (stored playbook)")
    if loaded.sha256 != meta.playbook_hash:
        raise CampaignError(f"campaign {campaign_id}: stored playbook does not match its hash")
    recorded = meta.host
    if recorded.get("kernel_release") != host.facts.get("kernel_release") and not store.runs(
        campaign_id
    ):  # registered, then a kernel installed (kernel install --campaign): nothing to mix
        meta = store.set_host(campaign_id, host.facts)
        recorded = meta.host
    for key in ("hostname", "kernel_release", "accelerator"):
        if recorded.get(key) != host.facts.get(key):
            raise CampaignError(
                f"campaign {campaign_id} ran with {key}={recorded.get(key)!r}, this host has "
                f"{host.facts.get(key)!r}: resuming would mix runs that must not be pooled",
                hint="start a new campaign on this host instead",
            )
    return meta, loaded


# --- execution ------------------------------------------------------------------------------


def campaign_report(outcome: CampaignOutcome, db_url: str | None) -> tuple[str, Path]:
    """The RFC-style table of the campaign (text) and the path of its HTML report, written
    now (StoreError when the campaign cannot be read)."""
    with open_store(db_url) as store:
        analysis = load_analysis(store, outcome.campaign_id)
    path = write_report(render(analysis, "html"), default_report_path(analysis, "html"))
    return render(analysis, "text"), path

"""Reap what crashed runs left: guests whose owner process is dead, their overlays and
records, and run directories without a record. Domains kvmple has no record of, even with
the kvmple- prefix, are reported and never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field

from kvmple.errors import KvmpleError
from kvmple.vm import registry
from kvmple.vm.libvirt_backend import connect
from kvmple.vm.spec import DOMAIN_PREFIX


@dataclass
class GcReport:
    removed_domains: list[str] = field(default_factory=list)
    removed_dirs: list[str] = field(default_factory=list)
    removed_records: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # "name: why"
    foreign: list[str] = field(default_factory=list)  # kvmple-* domains without a record
    errors: list[str] = field(default_factory=list)

    @property
    def nothing_done(self) -> bool:
        return not (self.removed_domains or self.removed_dirs or self.removed_records)


def reap(record: registry.GuestRecord, report: GcReport) -> None:
    """Destroy the guest of ``record`` (if it still runs), delete its files and record."""
    try:
        with connect(record.uri) as lv:
            if lv.destroy(record.domain):
                report.removed_domains.append(record.domain)
    except KvmpleError as exc:
        report.errors.append(f"{record.domain}: {exc.message}")
        return
    if registry.guests_dir().joinpath(record.domain).exists():
        report.removed_dirs.append(record.run_dir)
    registry.forget(record)
    report.removed_records.append(record.domain)


def stop_owner(record: registry.GuestRecord, report: GcReport, wait_s: float = 120.0) -> None:
    """Stop a guest that is still starting: SIGTERM to its owner (a kvmple process, checked
    by its start time, so never a recycled pid), whose own clean-up destroys the guest and
    removes its files; then reap whatever it left. The guest's domain is in
    ``report.removed_records`` when it is gone, in ``report.errors`` when the owner did not
    exit within ``wait_s`` seconds."""
    if record.owner_alive:
        try:
            os.kill(record.owner_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while record.owner_alive and time.monotonic() < deadline:
            time.sleep(0.5)
        if record.owner_alive:
            report.errors.append(
                f"{record.domain}: its owner, process {record.owner_pid}, did not exit within "
                f"{wait_s:.0f} s of SIGTERM"
            )
            return
    left = registry.load(record.domain)
    if left is None:
        report.removed_records.append(record.domain)
        return
    reap(left, report)


def collect(*, include_detached: bool = False, uris: tuple[str, ...] = ()) -> GcReport:
    """Reap leftovers of crashed runs (and detached guests with ``include_detached``).

    ``uris``: extra libvirt URIs to scan for prefixed domains without a record (reported as
    foreign, left alone).
    """
    report = GcReport()
    records = registry.all_records()
    for record in records:
        if record.owner_alive:
            report.kept.append(f"{record.domain}: in use by process {record.owner_pid}")
        elif record.detached and not include_detached:
            report.kept.append(f"{record.domain}: detached (stop it with 'kvmple vm down')")
        else:
            reap(record, report)
    known = {r.domain for r in registry.all_records()}
    for run_dir in sorted(registry.guests_dir().iterdir()):
        if run_dir.name not in known:
            shutil.rmtree(run_dir, ignore_errors=True)
            report.removed_dirs.append(str(run_dir))
    seen_uris = set(uris) | {r.uri for r in records}
    for uri in sorted(seen_uris):
        try:
            with connect(uri) as lv:
                for name in lv.names(DOMAIN_PREFIX):
                    if name not in known and name not in report.removed_domains:
                        report.foreign.append(f"{name} ({uri})")
        except KvmpleError as exc:
            report.errors.append(f"{uri}: {exc.message}")
    return report

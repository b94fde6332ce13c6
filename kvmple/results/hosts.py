"""Hosts side by side (``kvmple report --hosts``): the same playbook run on several hosts
(e.g. a fleet of Intel and AMD machines), one column per host, one row per cell, each cell
"mean (±CI)", plus every host's ratio to the first host with its bootstrap CI.

Absolute throughput depends on the hardware, so the ratio column is what travels; it is a
description of the hosts, not a verdict about a patch."""

from __future__ import annotations

from collections.abc import Sequence

from kvmple.errors import UsageError
from kvmple.results.analysis import CampaignAnalysis, analyse, higher_is_better
from kvmple.results.cells import CellKey
from kvmple.results.records import CampaignMeta
from kvmple.results.stats import compare
from kvmple.results.store import Store
from kvmple.results.tables import Table, gain_cell, markdown_table, mean_ci, text_table


def host_label(meta: CampaignMeta) -> str:
    return str(meta.host.get("hostname") or meta.id)


def pick_campaigns(store: Store, refs: Sequence[str]) -> list[CampaignMeta]:
    """The named campaigns; without names, the newest complete campaign of every host that
    ran the newest campaign's playbook (by playbook name)."""
    if refs:
        metas = [store.resolve(ref) for ref in refs]
    else:
        everything = store.campaigns()
        if not everything:
            raise UsageError("the store has no campaigns", hint="run one: kvmple run PLAYBOOK")
        newest = max(everything, key=lambda m: m.created)
        latest: dict[str, CampaignMeta] = {}
        for meta in sorted(everything, key=lambda m: m.created):
            if meta.name == newest.name and meta.status == "complete":
                latest[host_label(meta)] = meta
        metas = list(latest.values())
    if len({m.id for m in metas}) != len(metas):
        raise UsageError("a campaign is named twice", hint="name each host's campaign once")
    if len(metas) < 2:
        raise UsageError(
            f"--hosts needs campaigns of at least two hosts (found {len(metas)})",
            hint="name them: kvmple report --hosts CAMPAIGN-A CAMPAIGN-B",
        )
    names = {m.primary_metric for m in metas}
    if len(names) > 1:
        raise UsageError(
            f"the campaigns measure different figures ({', '.join(sorted(names))})",
            hint="compare hosts that ran the same playbook",
        )
    return metas


def hosts_table(analyses: Sequence[CampaignAnalysis]) -> Table:
    """Rows: cells (in the first campaign's order, then any others); columns: hosts."""
    first = analyses[0]
    hib = higher_is_better(first.meta)
    by_host = [{c.cell.key: c for c in a.cells} for a in analyses]
    keys: list[CellKey] = []
    labels: dict[CellKey, str] = {}
    for analysis in analyses:
        for result in analysis.cells:
            if result.cell.key not in labels:
                keys.append(result.cell.key)
                labels[result.cell.key] = result.label
    header = ["cell", *(host_label(a.meta) for a in analyses)]
    header += [f"{host_label(a.meta)} / {host_label(first.meta)}" for a in analyses[1:]]
    rows = []
    for key in keys:
        row = [labels[key]]
        results = [cells.get(key) for cells in by_host]
        row += [mean_ci(r.stats) if r is not None else "not run" for r in results]
        base = results[0]
        for other in results[1:]:
            if base is None or other is None or not base.cell.values or not other.cell.values:
                row.append("n/a")
                continue
            comp = compare(base.cell.values, other.cell.values, higher_is_better=hib)
            row.append(gain_cell(comp))
        rows.append(tuple(row))
    notes = [
        f"{host_label(a.meta)}: campaign {a.meta.id}; cpu {a.meta.host.get('cpu_model', '?')}; "
        f"kernel {a.meta.host.get('kernel_release', '?')}; "
        f"accelerator {a.meta.host.get('accelerator', '?')}; {a.n_runs} runs"
        for a in analyses
    ]
    notes.append(
        f"{first.meta.primary_metric} ({first.meta.metric_unit}): mean (±95% CI); ratios to "
        f"{host_label(first.meta)} with bootstrap 95% CI"
    )
    playbooks = {a.meta.playbook_hash for a in analyses}
    if len(playbooks) > 1:
        notes.append("WARNING: the hosts ran different playbook texts")
    return Table(f"hosts side by side: {first.meta.name}", tuple(header), tuple(rows), tuple(notes))


def render_hosts(
    store: Store, refs: Sequence[str], fmt: str = "text", threshold: float = 0.02
) -> str:
    """Load the campaigns and render the side-by-side table as text or markdown."""
    metas = pick_campaigns(store, refs)
    analyses = [analyse(m, store.runs(m.id), allow_mixed=False, threshold=threshold) for m in metas]
    table = hosts_table(analyses)
    if fmt == "markdown":
        return markdown_table(table) + "\n"
    if fmt == "text":
        return text_table(table) + "\n"
    raise UsageError(f"--hosts renders text or markdown, not {fmt}")

"""Reports as tables: the RFC's shape (per message size, rows no PLE / PLE, columns by
overcommit, "mean (±CI)", gain and cost rows), a generic per-cell table, and the "vs RFC"
lines; rendered as plain text (ready to paste into an email) or markdown.

Tables are built once as ``Table`` values and rendered by format, so text, markdown and
HTML always show the same numbers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from kvmple.results.analysis import CampaignAnalysis, RfcTable
from kvmple.results.compare import CampaignComparison
from kvmple.results.evidence import summarise_confounders, summarise_exits, summarise_yield
from kvmple.results.stats import CellStats, Comparison, runs_needed

ROW_LABELS = {"off": "no PLE", "on": "PLE", "unavailable": "PLE unavailable"}


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def number(value: float) -> str:
    """Figures people read: thousands separators, 3 significant digits below 100."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def mean_ci(stats: CellStats | None) -> str:
    if stats is None:
        return "no data"
    hw = stats.halfwidth
    return (
        f"{number(stats.mean)} (n={stats.n})"
        if hw is None
        else f"{number(stats.mean)} (±{number(hw)})"
    )


def pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


def gain_cell(comp: Comparison | None) -> str:
    if comp is None or comp.ratio is None:
        return "n/a"
    if comp.ratio_ci_low is None or comp.ratio_ci_high is None:
        return f"{pct(comp.ratio)} (no CI)"
    return f"{pct(comp.ratio)} [{pct(comp.ratio_ci_low)}, {pct(comp.ratio_ci_high)}]"


def ratio_cell(comp: Comparison | None) -> str:
    if comp is None or comp.ratio is None:
        return "n/a"
    if comp.ratio_ci_low is None or comp.ratio_ci_high is None:
        return f"{comp.ratio:.3f}"
    return f"{comp.ratio:.3f} [{comp.ratio_ci_low:.3f}, {comp.ratio_ci_high:.3f}]"


def _column_label(overcommit: float, spinners: object) -> str:
    label = f"{overcommit:g}x overcommit"
    if spinners is None:
        return label
    return f"{label} ({spinners} spinner{'' if spinners == 1 else 's'})"


def rfc_table(analysis: CampaignAnalysis, table: RfcTable) -> Table:
    meta = analysis.meta
    unit = f" ({meta.metric_unit})" if meta.metric_unit else ""
    header = (
        "",
        *(_column_label(oc, sp) for oc, sp in zip(table.columns, table.spinners, strict=True)),
    )
    rows: list[tuple[str, ...]] = []
    for row, cells in table.rows:
        rows.append((ROW_LABELS[row], *(mean_ci(c.stats if c else None) for c in cells)))
    if table.gains:
        rows.append(
            (
                "PLE gain",
                *(f"{gain_cell(g)} {g.verdict if g else ''}".strip() for g in table.gains),
            )
        )
    for row, costs in table.costs:
        rows.append(
            (
                f"{ROW_LABELS[row]} vs {table.columns[0]:g}x",
                "1 (reference)",
                *(ratio_cell(c) for c in costs[1:]),
            )
        )
    notes = [
        f"{meta.primary_metric}{unit}: mean (±half-width of the 95% bootstrap CI of the mean)",
        "gain: PLE / no PLE - 1 [95% CI]; 'vs' rows: throughput / throughput at the first "
        "column [95% CI]",
    ]
    if analysis.ple_unavailable and not table.gains:
        notes.append(f"PLE unavailable: {analysis.ple_unavailable}")
    return Table(f"{meta.name}: {table.title}", header, tuple(rows), tuple(notes))


def power_hint(cv: float | None, change: float) -> str:
    if cv is None:
        return "n/a"
    needed = runs_needed(cv, change, n_limit=10_000)
    return "> 10,000" if needed is None else str(needed)


def cell_table(analysis: CampaignAnalysis) -> Table:
    rows = []
    for result in analysis.cells:
        s = result.stats
        failed = str(len(result.cell.failed_runs))
        if s is None:
            rows.append((result.label, "0", failed, "no data", "", "", "", "", "", ""))
            continue
        ci = (
            "n/a"
            if s.ci_low is None or s.ci_high is None
            else (f"[{number(s.ci_low)}, {number(s.ci_high)}]")
        )
        outliers = ", ".join(number(s.values[i]) for i in s.outliers) or "-"
        rows.append(
            (
                result.label,
                str(s.n),
                failed,
                number(s.mean),
                number(s.median),
                "n/a" if s.stddev is None else number(s.stddev),
                "n/a" if s.cv is None else f"{100 * s.cv:.1f}%",
                ci,
                outliers,
                power_hint(s.cv, analysis.threshold),
            )
        )
    pct_label = f"{100 * analysis.threshold:g}%"
    header = (
        "cell",
        "n",
        "failed",
        "mean",
        "median",
        "stddev",
        "CV",
        "95% CI",
        "outliers",
        f"runs/side for {pct_label}",
    )
    notes = (
        "failed runs are listed, never pooled; outliers (Tukey 1.5 IQR) are flagged, not dropped",
        f"runs/side for {pct_label}: runs per side a comparison needs to detect a {pct_label} "
        "change at this cell's noise (two-sided t-test, alpha 0.05, power 0.8)",
    )
    return Table(f"{analysis.meta.primary_metric} per cell", header, tuple(rows), notes)


def vs_rfc_table(analysis: CampaignAnalysis) -> Table | None:
    if not analysis.vs_rfc:
        return None
    rows = []
    for line in analysis.vs_rfc:
        agrees = {True: "yes", False: "no", None: "n/a"}[line.agrees]
        if line.ours is not None:
            ours = ratio_cell(line.ours)
        else:
            ours = "unavailable" if line.note == "PLE unavailable here" else "no data"
        rows.append((str(line.size), line.what, ours, f"{line.rfc:.3f}", agrees, line.note))
    notes = [f"RFC figures: {analysis.rfc_source}"]
    if analysis.ple_unavailable:
        notes.append(f"PLE unavailable here: {analysis.ple_unavailable}")
    return Table(
        "vs RFC (ratios: absolute throughput depends on the hardware)",
        ("size", "ratio", "ours [95% CI]", "RFC", "RFC in our CI", "note"),
        tuple(rows),
        tuple(notes),
    )


def evidence_table(analysis: CampaignAnalysis) -> Table | None:
    """Per cell, beside its throughput, what KVM did during the windows: PAUSE exits,
    directed yields, confounders, or "unavailable: why" (None: no run has KVM evidence)."""
    if not any(r.kvm for r in analysis.cells):
        return None
    reasons: dict[str, str] = {}  # "unavailable: why" -> its footnote mark, said once

    def shown(text: str) -> str:
        if not text.startswith("unavailable: "):
            return text
        mark = reasons.setdefault(text, f"[{len(reasons) + 1}]")
        return f"unavailable {mark}"

    rows = tuple(
        (
            r.label,
            mean_ci(r.stats),
            shown(summarise_exits(r.kvm)),
            shown(summarise_yield(r.kvm)),
            shown(summarise_confounders(r.kvm)),
        )
        for r in analysis.cells
    )
    notes = (
        *(f"{mark} {text}" for text, mark in reasons.items()),
        "exits: kvm:kvm_exit counted by tracefs hist triggers over each run's window "
        "(PAUSE = VMX reason 40 / SVM 0x77), means per run",
        "directed yield: KVM's directed_yield_attempted/successful (debugfs, Linux 5.13+), "
        "change per run summed over the guests; in 6.1 they count only the PV sched_yield "
        "hypercall, not PLE's yield_to",
        "confounders: found on the host as each run started (kvmple doctor lists them too)",
    )
    header = ("cell", analysis.meta.primary_metric, "VM exits", "directed yield", "confounders")
    return Table("evidence per cell (did the mechanism fire?)", header, rows, notes)


def failures_table(analysis: CampaignAnalysis) -> Table | None:
    rows = tuple((r.label, reason) for r in analysis.cells for reason in r.cell.failure_reasons())
    if not rows:
        return None
    return Table("failed runs (not pooled)", ("cell", "run: reason"), rows)


def all_tables(analysis: CampaignAnalysis) -> list[Table]:
    tables = [rfc_table(analysis, t) for t in analysis.tables]
    tables.append(cell_table(analysis))
    for extra in (evidence_table(analysis), vs_rfc_table(analysis), failures_table(analysis)):
        if extra is not None:
            tables.append(extra)
    return tables


def heading(analysis: CampaignAnalysis) -> list[str]:
    meta = analysis.meta
    created = dt.datetime.fromtimestamp(meta.created, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = ", ".join(
        str(meta.host[k])
        for k in ("hostname", "cpu_model", "kernel_release", "accelerator")
        if k in meta.host
    )
    lines = [
        f"campaign {meta.id} ({meta.name}), {meta.status}, created {created}",
        f"{analysis.n_runs} runs, {analysis.n_failed} failed; host: {host or 'not recorded'}; "
        f"kvmple {meta.kvmple_version}",
    ]
    lines += [f"WARNING: {w}" for w in analysis.warnings]
    return lines


def text_table(table: Table) -> str:
    widths = [max(len(r[i]) for r in (table.header, *table.rows)) for i in range(len(table.header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [table.title, line(table.header), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in table.rows]
    out += [f"  {n}" for n in table.notes]
    return "\n".join(out)


def render_text(analysis: CampaignAnalysis) -> str:
    parts = ["\n".join(heading(analysis))]
    parts += [text_table(t) for t in all_tables(analysis)]
    return "\n\n".join(parts) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    out = [f"### {table.title}", ""]
    out.append("| " + " | ".join(_md_escape(h) or " " for h in table.header) + " |")
    out.append("|" + "|".join("---" for _ in table.header) + "|")
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        out.append("")
        out += [f"- {_md_escape(n)}" for n in table.notes]
    return "\n".join(out)


def render_markdown(analysis: CampaignAnalysis) -> str:
    parts = [f"## kvmple report: {analysis.meta.name}", ""]
    parts += [f"- {line}" for line in heading(analysis)]
    body = "\n\n".join(markdown_table(t) for t in all_tables(analysis))
    return "\n".join(parts) + "\n\n" + body + "\n"


# -- campaign vs campaign ------------------------------------------------------------------


def p_value(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def _noisier(comp: Comparison) -> float | None:
    cvs = [s.cv for s in (comp.baseline, comp.candidate) if s.cv is not None]
    return max(cvs) if cvs else None


def comparison_table(cc: CampaignComparison) -> Table:
    rows = []
    for c in cc.cells:
        comp = c.comparison
        if comp is None:
            rows.append((c.label, "", "", "n/a", "", "", "", "", f"inconclusive ({c.missing})"))
            continue
        rows.append(
            (
                c.label,
                mean_ci(comp.baseline),
                mean_ci(comp.candidate),
                gain_cell(comp),
                p_value(comp.mannwhitney_p),
                p_value(comp.welch_p),
                "n/a" if comp.cohens_d is None else f"{comp.cohens_d:+.2f}",
                power_hint(_noisier(comp), cc.threshold),
                comp.verdict,
            )
        )
    header = (
        "cell",
        f"{cc.baseline.id} (baseline)",
        f"{cc.candidate.id} (candidate)",
        "change [95% CI]",
        "Mann-Whitney p",
        "Welch p",
        "Cohen's d",
        f"runs/side for {100 * cc.threshold:g}%",
        "verdict",
    )
    notes = (
        f"threshold {100 * cc.threshold:g}%: improved/regressed when the ratio's bootstrap CI "
        "excludes 1, Welch p < 0.05 and the change is at least the threshold; inconclusive when "
        "a threshold-sized loss cannot be ruled out",
    )
    return Table(
        f"{cc.candidate.id} vs {cc.baseline.id}: {cc.baseline.primary_metric}",
        header,
        tuple(rows),
        notes,
    )


def comparison_heading(cc: CampaignComparison) -> list[str]:
    counts: dict[str, int] = {}
    for c in cc.cells:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    lines = [
        f"baseline {cc.baseline.id} ({cc.baseline.name}) vs candidate {cc.candidate.id} "
        f"({cc.candidate.name})",
        f"outcome: {cc.outcome.upper()} ({summary}); exit code {cc.exit_code}",
    ]
    lines += [f"differs: {d}" for d in cc.differences] or ["differs: nothing recorded"]
    lines += [f"WARNING: {w}" for w in cc.warnings]
    return lines


def render_comparison_text(cc: CampaignComparison) -> str:
    return "\n".join(comparison_heading(cc)) + "\n\n" + text_table(comparison_table(cc)) + "\n"


def render_comparison_markdown(cc: CampaignComparison) -> str:
    head = "\n".join(f"- {line}" for line in comparison_heading(cc))
    return f"## kvmple compare\n\n{head}\n\n{markdown_table(comparison_table(cc))}\n"

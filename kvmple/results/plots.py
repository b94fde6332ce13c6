"""Plots for the HTML report, as PNG bytes (matplotlib's Agg renderer through the
object-oriented API: no pyplot state, no display needed)."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

from kvmple.results.analysis import CampaignAnalysis

ROW_STYLE = {
    "off": ("no PLE", "tab:red", "o"),
    "on": ("PLE", "tab:blue", "s"),
    "unavailable": ("PLE unavailable", "tab:gray", "^"),
}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _ylabel(analysis: CampaignAnalysis) -> str:
    unit = analysis.meta.metric_unit
    return f"{analysis.meta.primary_metric}" + (f" ({unit})" if unit else "")


def throughput_vs_overcommit(analysis: CampaignAnalysis) -> bytes:
    """Per message size: mean vs overcommit with 95% CI bars, one line per PLE setting.
    Campaigns that are not RFC-shaped get per-cell means with CI bars instead."""
    if not analysis.tables:
        return cell_means(analysis)
    count = len(analysis.tables)
    fig = Figure(figsize=(5.2 * count, 4.0), layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    for ax, table in zip(axes, analysis.tables, strict=True):
        for row, cells in table.rows:
            label, color, marker = ROW_STYLE[row]
            xs, ys, lows, highs = [], [], [], []
            for overcommit, cell in zip(table.columns, cells, strict=True):
                if cell is None or cell.stats is None:
                    continue
                s = cell.stats
                xs.append(overcommit)
                ys.append(s.mean)
                lows.append(s.mean - (s.ci_low if s.ci_low is not None else s.mean))
                highs.append((s.ci_high if s.ci_high is not None else s.mean) - s.mean)
            ax.errorbar(
                xs, ys, yerr=[lows, highs], label=label, color=color, marker=marker, capsize=4
            )
        ax.set_title(table.title)
        ax.set_xlabel("overcommit (busy vCPUs / host CPUs)")
        ax.set_xticks(list(table.columns))
        ax.set_ylabel(_ylabel(analysis))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{analysis.meta.name} ({analysis.meta.id}): mean and 95% CI")
    return _png(fig)


def cell_means(analysis: CampaignAnalysis) -> bytes:
    results = [r for r in analysis.cells if r.stats is not None]
    fig = Figure(figsize=(max(5.0, 0.8 * len(results) + 2), 4.0))
    ax = fig.subplots()
    means = [r.stats.mean for r in results if r.stats]
    errs = [
        [r.stats.mean - (r.stats.ci_low or r.stats.mean) for r in results if r.stats],
        [(r.stats.ci_high or r.stats.mean) - r.stats.mean for r in results if r.stats],
    ]
    ax.bar(range(len(results)), means, yerr=errs, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(results)), [r.label for r in results], rotation=30, ha="right")
    ax.set_ylabel(_ylabel(analysis))
    ax.set_title(f"{analysis.meta.name}: mean and 95% CI per cell")
    return _png(fig)


def per_run_scatter(analysis: CampaignAnalysis) -> bytes:
    """Every ok run as a dot per cell (jittered), outliers ringed, cell means as bars."""
    results = list(analysis.cells)
    fig = Figure(figsize=(max(6.0, 0.7 * len(results) + 2), 4.2))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    for i, result in enumerate(results):
        if result.stats is None:
            ax.annotate("no data", (i, 0), ha="center", color="tab:red")
            continue
        values = np.asarray(result.stats.values)
        xs = i + rng.uniform(-0.18, 0.18, len(values))
        ax.scatter(xs, values, s=14, alpha=0.7, color="tab:blue")
        outliers = list(result.stats.outliers)
        if outliers:
            ax.scatter(
                xs[outliers], values[outliers], s=60, facecolors="none", edgecolors="tab:red"
            )
        ax.hlines(result.stats.mean, i - 0.3, i + 0.3, color="black", linewidth=1.5)
    ax.set_xticks(range(len(results)), [r.label for r in results], rotation=35, ha="right")
    ax.set_ylabel(_ylabel(analysis))
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("every run (dots), cell mean (bar), outliers (red rings)")
    return _png(fig)

"""The HTML report: one self-contained file (inline CSS, plots embedded as base64 PNG) with
the RFC tables, per-cell statistics, vs RFC, plots, provenance, evidence and failures."""

from __future__ import annotations

import base64
import html

from kvmple.results.analysis import CampaignAnalysis
from kvmple.results.plots import per_run_scatter, throughput_vs_overcommit
from kvmple.results.tables import Table, all_tables, heading

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #e8eef6; }
.note { color: #555; font-size: 0.85em; margin: 0.1em 0; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def _table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in table.notes)
    return f"<h2>{e(table.title)}</h2><table><tr>{head}</tr>{body}</table>{notes}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _pairs(title: str, pairs: dict[str, str]) -> str:
    rows = tuple((k, v) for k, v in pairs.items())
    return _table(Table(title, ("key", "value"), rows)) if rows else ""


def render_html(analysis: CampaignAnalysis) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    meta = analysis.meta
    head, *rest = heading(analysis)
    intro = "".join(
        f'<p class="warning">{e(line)}</p>' if line.startswith("WARNING") else f"<p>{e(line)}</p>"
        for line in rest
    )
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>kvmple report {e(meta.id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>kvmple report: {e(meta.name)}</h1><p>{e(head)}</p>{intro}",
    ]
    tables = all_tables(analysis)
    parts += [_table(t) for t in tables[: len(analysis.tables)]]
    parts.append("<h2>Plots</h2>")
    parts.append(_img(throughput_vs_overcommit(analysis), "throughput vs overcommit"))
    parts.append(_img(per_run_scatter(analysis), "every run per cell"))
    parts += [_table(t) for t in tables[len(analysis.tables) :]]
    evidence = {f"{r.label}: {k}": v for r in analysis.cells for k, v in r.evidence.items()}
    parts.append(_pairs("Evidence (per cell, from the runs)", evidence))
    parts.append(_pairs("Provenance", analysis.provenance))
    parts.append(
        f"<h2>Playbook</h2><p class='note'>sha256 {e(meta.playbook_hash)}</p>"
        f"<pre>{e(meta.playbook_text)}</pre>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)

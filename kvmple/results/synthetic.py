"""Synthetic campaigns shaped like the RFC's, for tests and benchmarks ONLY.

The figures are drawn around the RFC's published means with a chosen noise, so a report of
them should reproduce the RFC's ratios within its CIs; everything is labelled synthetic
(host "synthetic", notes) so such data can never pass for a measurement.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np

from kvmple import __version__
from kvmple.results.records import CampaignMeta, CellValue, RunRecord
from kvmple.results.rfc import rfc_figures

SPINNERS = {1.0: 0, 1.5: 2, 2.0: 4}


def synthetic_campaign(
    campaign_id: str,
    *,
    runs_per_cell: int = 30,
    sizes: tuple[int, ...] = (8, 16),
    ple: tuple[str, ...] = ("off", "on"),
    cv: float = 0.03,
    scale: float = 1.0,
    failed_every: int = 0,
    seed: int = 1,
    provenance: dict[str, object] | None = None,
) -> tuple[CampaignMeta, list[RunRecord]]:
    """A campaign and its runs: cells (ple x size x overcommit 1.0/1.5/2.0).

    ``ple=("unavailable",)`` mimics a TCG host (drawn around the RFC's no-PLE figures);
    ``scale`` multiplies every mean (0.01 ~ TCG speed); ``failed_every=k`` fails every k-th run.
    """
    rng = np.random.default_rng(seed)
    rfc = rfc_figures()
    text = f"synthetic: sizes={sizes} ple={ple} runs={runs_per_cell}\n"
    meta = CampaignMeta(
        id=campaign_id,
        name="synthetic-rfc",
        playbook_hash=hashlib.sha256(text.encode()).hexdigest(),
        playbook_text=text,
        created=time.time(),
        status="complete",
        host={"hostname": "synthetic", "accelerator": "none (synthetic data)"},
        kvmple_version=__version__,
        seed=seed,
        axes={
            "ple": list(ple),
            "size": list(sizes),
            "spinners": list(SPINNERS.values()),
            "overcommit": list(SPINNERS),
        },
        primary_metric="transfers_per_sec",
        metric_unit="transfers/s",
        notes={"synthetic": True}
        | ({"unavailable": {"ple": "synthetic: no PLE"}} if "unavailable" in ple else {}),
    )
    runs = []
    count = 0
    for mode in ple:
        for size in sizes:
            for overcommit, spinners in SPINNERS.items():
                mean = rfc.throughput(size, mode == "on", overcommit)
                assert mean is not None
                cell: dict[str, CellValue] = {
                    "ple": mode,
                    "size": size,
                    "spinners": spinners,
                    "overcommit": overcommit,
                }
                for index in range(runs_per_cell):
                    count += 1
                    failed = failed_every > 0 and count % failed_every == 0
                    value = float(rng.normal(mean * scale, mean * scale * cv))
                    started = 1_700_000_000.0 + count * 40
                    runs.append(
                        RunRecord(
                            campaign_id=campaign_id,
                            run_key=f"{mode}-{size}-{spinners}-{index}",
                            cell=cell,
                            run_index=index,
                            status="failed" if failed else "ok",
                            reason="synthetic failure" if failed else "",
                            figures={} if failed else {"transfers_per_sec": value},
                            raw=f"synthetic {value:.1f}",
                            started=started,
                            ended=started + 35,
                            measure_seconds=30.0,
                            provenance=dict(provenance or {"host": {"hostname": "synthetic"}}),
                            evidence={"unavailable": "synthetic data has no exit counters"},
                        )
                    )
    return meta, runs

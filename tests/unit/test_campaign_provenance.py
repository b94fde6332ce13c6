"""The run provenance is a typed value (RunProvenance) whose JSON form keeps the stored
keys, and the results' pooling keys derive from the fields it marks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from kvmple.campaign.model import HostFacts
from kvmple.campaign.plan import build_plan
from kvmple.campaign.playbook import load_playbook
from kvmple.campaign.provenance import BlockFacts, run_provenance
from kvmple.image.artifact import ImageManifest
from kvmple.results import CampaignMeta
from kvmple.results.cells import CAMPAIGN_KEYS, POOL_KEYS
from kvmple.results.provenance import RunProvenance

SMOKE = Path(__file__).resolve().parents[2] / "playbooks" / "smoke.yaml"
STORED_KEYS = [  # the record's keys before it was typed: stored runs keep this shape
    "host",
    "kernel",
    "knobs",
    "guest",
    "image",
    "affinity",
    "vcpu_threads",
    "boot",  # added with booted snapshots (None in runs stored before them)
    "kvmple_version",
    "playbook_hash",
    "seed",
    "block",
    "position",
    "attempt",
    "params",
    "overcommit",
]


def test_pooling_keys_derive_from_the_provenance_type() -> None:
    assert POOL_KEYS == ("host", "kernel", "knobs", "guest", "image", "affinity")
    assert CAMPAIGN_KEYS == ("host", "kernel", "guest", "image")


def _provenance(**facts: object) -> RunProvenance:
    playbook = load_playbook(SMOKE).playbook
    run = build_plan(playbook, {"ple": "test"}).runs[0]
    host = HostFacts("tcg", "tcg", "test", None, facts={"hostname": "h", **facts})
    meta = CampaignMeta(
        id="c1",
        name="smoke",
        playbook_hash="abc",
        playbook_text="",
        created=0.0,
        status="running",
        kvmple_version="0",
        primary_metric="transfers_per_sec",
    )
    image = SimpleNamespace(
        name="debian12-amqp",
        key="k1",
        manifest=ImageManifest(name="debian12-amqp", key="k1", kernel_release="6.1"),
    )
    block_facts = BlockFacts(
        knobs={"ple": {"unavailable": "TCG"}},
        affinity={role: {"0": [0], "1": [1]} for role in playbook.guests},
        threads={role: [11, 12] for role in playbook.guests},
        boot={role: {"mode": "cold", "snapshot": None} for role in playbook.guests},
    )
    return run_provenance(
        host,
        playbook,
        meta,
        dict.fromkeys(playbook.guests, image),
        run,
        block_facts=block_facts,
        block_index=0,
        position=2,
        attempt=1,
    )


def test_stored_form_keeps_its_keys_and_reads_back() -> None:
    provenance = _provenance(kernel_release="6.1.0-28-amd64", cmdline="ro quiet")
    stored = provenance.to_record()
    assert list(stored) == STORED_KEYS
    assert stored["host"]["hostname"] == "h" and stored["host"]["kvm_module"] is None
    assert stored["kernel"] == {"kernel_release": "6.1.0-28-amd64", "cmdline": "ro quiet"}
    assert stored["guest"]["amqp"]["pin"] == [[0], [1]]
    assert stored["image"]["spin"] == {
        "name": "debian12-amqp",
        "key": "k1",
        "kernel_release": "6.1",
    }
    assert stored["boot"]["spin"] == {"mode": "cold", "snapshot": None}
    assert RunProvenance.model_validate(stored) == provenance
    # a run stored before booted snapshots (no "boot") still reads back
    old = {k: v for k, v in stored.items() if k != "boot"}
    assert RunProvenance.model_validate(old).boot is None


def test_a_fact_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValidationError):
        _provenance(hostname=["not", "a", "name"])

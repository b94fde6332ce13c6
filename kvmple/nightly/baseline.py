"""Which campaign a night is compared with (pure): the last good night of the same job on
the same host with the same playbook, unless the config names a campaign."""

from __future__ import annotations

from collections.abc import Sequence

from kvmple.errors import StoreError
from kvmple.nightly.outputs import CampaignOutputs
from kvmple.nightly.state import NightState
from kvmple.nightly.verdict import GOOD_VERDICTS


def last_good_night(
    nights: Sequence[NightState], host: str, playbook_sha256: str
) -> NightState | None:
    """The newest night (``nights`` newest first) with a good verdict, a stored campaign, the
    same host and the same playbook text."""
    for night in nights:
        if night.verdict not in GOOD_VERDICTS or night.host != host:
            continue
        try:
            measured = night.outputs_of("campaign", CampaignOutputs)
        except StoreError:
            continue  # a damaged night is no baseline
        if measured is not None and measured.playbook_sha256 == playbook_sha256:
            return night
    return None

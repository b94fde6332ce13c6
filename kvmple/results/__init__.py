"""Results: the store (SQLite/PostgreSQL), statistics, RFC-shaped reports, comparisons, plots.

The campaign runner writes through ``open_store(url)`` and ``Store.add_run``; everything
else here reads runs back and turns them into figures people can trust.
"""

from kvmple.results.records import CampaignMeta, RunRecord
from kvmple.results.store import Store, open_store

__all__ = ["CampaignMeta", "RunRecord", "Store", "open_store"]

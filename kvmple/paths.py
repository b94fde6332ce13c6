"""Where kvmple keeps its files. Every location can be overridden by an environment variable
so tests and CI can use throw-away directories.

- KVMPLE_CACHE_DIR  images (content-addressed), kernel build outputs  (~/.cache/kvmple)
- KVMPLE_STATE_DIR  installation SSH key, saved PLE values, VM records  (~/.local/state/kvmple)
- KVMPLE_DATA_DIR   results store, campaign logs, reports  (~/.local/share/kvmple)
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def _dir(env: str, default: str) -> Path:
    value = os.environ.get(env)
    path = Path(value) if value else Path(default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    return _dir("KVMPLE_CACHE_DIR", platformdirs.user_cache_dir("kvmple"))


def state_dir() -> Path:
    return _dir("KVMPLE_STATE_DIR", platformdirs.user_state_dir("kvmple"))


def data_dir() -> Path:
    return _dir("KVMPLE_DATA_DIR", platformdirs.user_data_dir("kvmple"))


def project_root() -> Path | None:
    """The source checkout kvmple runs from, if any (for shipped playbooks, recipes, series)."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else None

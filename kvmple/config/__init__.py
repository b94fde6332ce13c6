"""Typed, validated models of kvmple's YAML files, loaded once at the edge.

Each file kind (image recipe, playbook, series manifest, nightly config) is a frozen pydantic
model in its own module here; ``load_model`` parses YAML with ``yaml.safe_load`` semantics,
validates it, and turns any problem into one ``ConfigError`` naming file, line and key.
"""

from kvmple.config.loader import load_model, parse_model

__all__ = ["load_model", "parse_model"]

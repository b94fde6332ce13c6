"""Which apt mirror to debootstrap from: the recipe's, else the one the host's apt sources name.

Lab hosts often reach only their own package mirror, so the default is whatever the host
already uses for the recipe's suite. Parsing is pure (text in, URL out) and unit-tested; the
reachability check is one small HTTP request made before debootstrap, so "mirror unreachable"
and "unknown suite" are reported as such instead of as a debootstrap failure.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from kvmple.errors import BuildError

FALLBACK = {
    "debian": "http://deb.debian.org/debian",
    "ubuntu": "http://archive.ubuntu.com/ubuntu",
}
APT_SOURCES = Path("/etc/apt")


def parse_one_line_sources(text: str) -> list[tuple[str, list[str]]]:
    """``deb [opts] URI SUITE COMPONENTS...`` lines -> [(uri, [suite])]."""
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append((words[0], [words[1]]))
    return found


def parse_deb822_sources(text: str) -> list[tuple[str, list[str]]]:
    """deb822 ``.sources`` stanzas (Types/URIs/Suites) -> [(uri, suites)] for Types: deb."""
    found: list[tuple[str, list[str]]] = []
    for stanza in _stanzas(text):
        if "deb" not in stanza.get("types", "").split():
            continue
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        suites = stanza.get("suites", "").split()
        for uri in stanza.get("uris", "").split():
            found.append((uri, suites))
    return found


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    last: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif raw[0].isspace() and last is not None:
            fields[last] += " " + raw.strip()
        elif ":" in raw:
            key, value = raw.split(":", 1)
            last = key.strip().lower()
            fields[last] = value.strip()
    return


def choose_mirror(sources: list[tuple[str, list[str]]], suite: str, distribution: str) -> str:
    """The first source carrying ``suite`` exactly, else the distribution's public mirror."""
    for uri, suites in sources:
        if suite in suites and uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    return FALLBACK[distribution]


def host_sources(root: Path = APT_SOURCES) -> list[tuple[str, list[str]]]:
    """All ``deb`` sources the host's apt configuration names."""
    sources: list[tuple[str, list[str]]] = []
    main = root / "sources.list"
    if main.is_file():
        sources += parse_one_line_sources(main.read_text(encoding="utf-8", errors="replace"))
    directory = root / "sources.list.d"
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            text = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix == ".list":
                sources += parse_one_line_sources(text)
            elif path.suffix == ".sources":
                sources += parse_deb822_sources(text)
    return sources


def default_mirror(suite: str, distribution: str) -> str:
    """The mirror a recipe without ``mirror:`` uses on this host."""
    return choose_mirror(host_sources(), suite, distribution)


def check_suite(mirror: str, suite: str, timeout: float = 20.0) -> None:
    """Fail clearly if the mirror is unreachable or does not carry the suite."""
    url = f"{mirror}/dists/{suite}/Release"
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise BuildError(
                f"step debootstrap: suite {suite!r} not found on mirror {mirror} ({url}: 404)",
                hint="check the recipe's 'suite' (a codename such as bookworm)",
            ) from exc
        raise BuildError(
            f"step debootstrap: mirror {mirror} answered HTTP {exc.code} for {url}",
            hint="check the recipe's 'mirror' or the host's apt sources",
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FileNotFoundError) or "No such file" in str(reason):
            raise BuildError(
                f"step debootstrap: suite {suite!r} not found on mirror {mirror} ({url})",
                hint="check the recipe's 'suite' and 'mirror'",
            ) from exc
        raise BuildError(
            f"step debootstrap: mirror {mirror} unreachable: {reason}",
            hint="check the network or set 'mirror:' in the recipe to a reachable apt mirror",
        ) from exc

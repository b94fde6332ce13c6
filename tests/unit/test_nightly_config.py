"""The nightly config: validation with file:line: key errors, relative paths, thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import ConfigError
from kvmple.nightly.config import load_config

GOOD = """\
name: yield-to-ple
tree: {path: ../linux, ref: main}
series: yield-to-ple-v7
playbook: playbooks/smoke.yaml
threshold: 5%
notify:
  junit: out/junit.xml
  email: {to: [lab@example.org], sendmail: ./fake-sendmail}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs" / "nightly.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_good_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    loaded = load_config(_write(tmp_path, GOOD))
    config = loaded.config
    assert config.tree.path == (tmp_path / "linux").resolve()
    assert config.tree.ref == "main"
    assert config.playbook == tmp_path / "jobs" / "playbooks" / "smoke.yaml"
    assert config.notify.junit == tmp_path / "jobs" / "out" / "junit.xml"
    assert config.threshold == pytest.approx(0.05)
    assert config.series == "yield-to-ple-v7"  # a name stays a name
    assert config.baseline.policy == "last-good"
    assert config.install.enabled is False
    assert len(loaded.sha256) == 64


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "nightly" / "nightly.yaml"
    config = load_config(example).config
    assert config.name == "yield-to-ple"
    assert config.install.enabled is True
    assert config.notify.email is not None


def test_modern_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "nightly" / "modern.yaml"
    config = load_config(example).config
    assert config.name == "modern-directed-yield" and config.series is None
    assert str(config.playbook).endswith("modern-overcommit.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("tree: {path: ../linux, ref: main}", "tree: {ref: main}"), "exactly one"),
        (
            GOOD.replace("tree: {path: ../linux, ref: main}", "tree: {path: x, url: y}"),
            "exactly one",
        ),
        (GOOD.replace("ref: main", "ref: --upload-pack=evil"), "not a git revision"),
        (GOOD.replace("threshold: 5%", "threshold: 150%"), "threshold"),
        (GOOD.replace("threshold: 5%", "threshold: lots%"), "not a percentage"),
        (GOOD.replace("lab@example.org", "'Lab <lab@example.org>'"), "plain e-mail"),
        (GOOD.replace("name: yield-to-ple", "name: Bad Name"), "name"),
        (GOOD + "baseline: {policy: campaign}\n", "needs campaign"),
        (GOOD + "colour: red\n", "unknown key"),
    ],
)
def test_bad_configs_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert message in caught.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "absent.yaml")

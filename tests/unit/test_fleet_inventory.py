"""Fleet inventory validation and the pure parts of the fan-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.errors import ConfigError
from kvmple.fleet.fanout import campaign_from_output, remote_argv
from kvmple.fleet.inventory import FleetHost, load_inventory

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample1"
GOOD = f"""\
store: postgresql://k:k@db.example/kvmple
hosts:
  intel-1:
    address: 10.0.0.1
    host_keys: ["{KEY}"]
    key: keys/lab
    env: {{KVMPLE_DATA_DIR: /srv/kvmple}}
    labels: {{cpu: intel}}
  amd-1:
    address: 10.0.0.2
    port: 2222
    host_keys: ["{KEY}"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_good_inventory(tmp_path: Path) -> None:
    inventory = load_inventory(_write(tmp_path, GOOD))
    assert list(inventory.hosts) == ["intel-1", "amd-1"]
    intel = inventory.hosts["intel-1"]
    assert intel.key == tmp_path / "keys" / "lab"
    assert intel.port == 22 and intel.user == "root" and intel.kvmple == ("kvmple",)
    assert inventory.hosts["amd-1"].key is None  # the installation key
    assert inventory.store == "postgresql://k:k@db.example/kvmple"


def test_example_inventory_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "nightly" / "fleet.yaml"
    assert set(load_inventory(path).hosts) == {"intel-1", "amd-1"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('    host_keys: ["' + KEY + '"]\n    key: keys/lab', "    key: keys/lab"), "host_keys"),
        (("KVMPLE_DATA_DIR", "BAD-NAME"), "not an environment variable name"),
        (("  amd-1:", "  amd 1:"), "host name"),
        (("port: 2222", "port: 99999"), "port"),
        (("store:", "stor:"), "unknown key"),
    ],
)
def test_bad_inventories(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as caught:
        load_inventory(_write(tmp_path, text))
    assert message in caught.value.message and "fleet.yaml" in caught.value.message


def test_workdir_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        FleetHost(address="h", host_keys=(KEY,), workdir="tmp")


def test_remote_argv() -> None:
    host = FleetHost(address="h", host_keys=(KEY,), kvmple=("/opt/k/bin/kvmple",))
    assert remote_argv(host, "/w/p.yaml", "postgresql://x/y", True) == [
        "/opt/k/bin/kvmple",
        "run",
        "/w/p.yaml",
        "--no-report",
        "--db",
        "postgresql://x/y",
        "--allow-unavailable",
    ]
    assert remote_argv(host, "/w/p.yaml", None, False) == [
        "/opt/k/bin/kvmple",
        "run",
        "/w/p.yaml",
        "--no-report",
    ]


def test_campaign_from_output() -> None:
    out = (
        "factor ple: unavailable\ncampaign smoke-20261127-101010-ab12: 4 ok runs, 1 guest boot(s)\n"
    )
    assert campaign_from_output(out, "") == "smoke-20261127-101010-ab12"
    err = "kvmple: error: boom\n  hint: stored runs are kept: kvmple run --resume smoke-1 continues"
    assert campaign_from_output("", err) == "smoke-1"
    assert campaign_from_output("nothing", "kvmple: error: no such file") is None

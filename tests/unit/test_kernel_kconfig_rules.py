"""The fragment check applies Kconfig's rules (issue 18, kind 5), not string equality."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmple.kernel.configs import check_fragments, parse_config, same_config_value

CASE = Path(__file__).resolve().parents[1] / "data" / "cases" / "config-m-promoted-to-y"


def test_case_m_built_in_without_modules_is_not_vanished() -> None:
    """Case config-m-promoted-to-y: tinyconfig (no MODULES) turns the asked =m into =y."""
    frag = parse_config((CASE / "kvm-host.config").read_text())
    final = parse_config((CASE / "final.config").read_text())
    check = check_fragments({"kvm-host.config": frag}, final, {}, "x86")
    assert check.vanished == []
    assert [m.describe() for m in check.built_in] == [
        f"CONFIG_{s} asked =m (from kvm-host.config), built in (=y) because "
        "CONFIG_MODULES is not set"
        for s in ("KVM", "KVM_INTEL", "KVM_AMD")
    ]


def test_m_becoming_y_with_modules_on_is_still_a_mismatch() -> None:
    final = parse_config("CONFIG_MODULES=y\nCONFIG_VHOST_NET=y\n")
    check = check_fragments({"f": {"VHOST_NET": "m"}}, final, {}, "x86")
    assert [m.describe() for m in check.vanished] == ["CONFIG_VHOST_NET=m (from f) is y"]
    assert check.built_in == []


def test_m_dropped_without_modules_is_still_vanished() -> None:
    """Built in is accepted; gone (unmet dependency) is not, MODULES or not."""
    final = parse_config("# CONFIG_MODULES is not set\n# CONFIG_VFIO is not set\n")
    check = check_fragments({"f": {"VFIO": "m"}}, final, {}, "x86")
    assert [m.symbol for m in check.vanished] == ["VFIO"]


@pytest.mark.parametrize(
    ("wanted", "got", "same"),
    [
        ("n", "n", True),  # '# CONFIG_X is not set' parses to 'n'
        ("", "n", True),  # CONFIG_X= is unset
        ("n", None, True),  # absent from the final .config
        ("y", None, False),
        ("0x1000000", "0x1000000", True),
        ("1000000", "0x1000000", True),  # hex symbol: Kconfig adds the 0x
        ("0x10", "0X0010", True),
        ("16", "0x10", False),  # 16 in a hex symbol is 0x16
        ("64", "64", True),
        ("064", "64", True),
        ("64", "65", False),
        ('"a\\"b"', '"a\\"b"', True),
        ('"abc"', '"abd"', False),
        ('""', "n", False),  # an empty string is not an unset bool
    ],
)
def test_values_compare_as_kconfig_writes_them(wanted: str, got: str | None, same: bool) -> None:
    final = parse_config("CONFIG_MODULES=y\n" + (f"CONFIG_X={got}\n" if got is not None else ""))
    final.update({"X": got} if got is not None else {})
    check = check_fragments({"f": {"X": wanted}}, final, {}, "x86")
    assert (check.vanished == []) is same
    assert same_config_value(wanted, got if got is not None else "n") is same


def test_not_set_comment_equals_explicit_n_and_absence() -> None:
    fragment = parse_config("# CONFIG_A is not set\nCONFIG_B=n\n# CONFIG_C is not set\n")
    final = parse_config("CONFIG_B=n\n# CONFIG_A is not set\n")  # C absent
    assert check_fragments({"f": fragment}, final, {}, "x86").vanished == []

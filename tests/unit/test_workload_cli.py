"""``kvmple workload list|parse``: JSON out, one line + hint and a distinct exit code on errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmple.cli import main
from tests.unit.test_workload_parsers import QPID_FULL_2011, QPID_SUMMARY_3


def test_parse_a_saved_qpid_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "perftest.log"
    log.write_text(QPID_FULL_2011)
    assert main(["workload", "parse", "amqp-perftest", str(log)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "qpid-perftest"
    assert data["transfers_per_sec"] == 223801
    assert data["iterations"][0]["size"] == 8


def test_parse_summary_with_explicit_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "s.log"
    log.write_text(QPID_SUMMARY_3)
    assert main(["workload", "parse", "amqp-perftest", str(log), "--format", "qpid-summary"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["iterations"]) == 3 and data["averages"]["transfers_per_sec"] == 1.99188e6


def test_parse_hackbench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "hb.log"
    log.write_text("Time: 1.25\n")
    assert main(["workload", "parse", "hackbench", str(log)]) == 0
    assert json.loads(capsys.readouterr().out) == {"source": "hackbench", "time": 1.25}


def test_parse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload", "parse", "amqp-perftest", str(tmp_path / "missing.log")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err
    bad = tmp_path / "bad.log"
    bad.write_text("Controller exception: Connection refused\n")
    assert main(["workload", "parse", "amqp-perftest", str(bad)]) == 8
    err = capsys.readouterr().err
    assert err.startswith(f"kvmple: error: {bad}: the perftest run failed: Controller exception")
    assert "hint:" in err


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["amqp-perftest"]["metrics"][0]["name"] == "transfers_per_sec"
    assert rows["spin"]["kind"] == "load" and "count" in rows["spin"]["params"]


def test_run_bad_param_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workload", "run", "amqp-perftest", "-p", "size=2"]) == 3
    assert "size: Input should be greater than or equal to 8" in capsys.readouterr().err
    assert main(["workload", "run", "spin", "-p", "count"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err

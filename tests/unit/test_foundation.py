"""errors, run, config loader and the CLI's error reporting."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from kvmple import cli
from kvmple.config import load_model
from kvmple.errors import CommandError, CommandTimeout, ConfigError
from kvmple.run import background, run, run_logged, run_streaming


def test_run_captures_output() -> None:
    result = run(["sh", "-c", "echo out; echo err >&2"], timeout=10)
    assert result.ok and result.stdout == "out\n" and result.stderr == "err\n"
    assert result.command == "sh -c 'echo out; echo err >&2'"


def test_run_failure_names_the_command() -> None:
    with pytest.raises(CommandError) as info:
        run(["sh", "-c", "echo boom >&2; exit 3", "arg with space"], timeout=10, what="probe")
    message = str(info.value)
    assert "probe (exit 3)" in message and "'arg with space'" in message and "boom" in message


def test_run_refuses_a_string() -> None:
    with pytest.raises(TypeError):
        run("ls -l", timeout=5)  # type: ignore[arg-type]


def test_run_missing_program() -> None:
    with pytest.raises(CommandError, match="not found"):
        run(["/nonexistent/prog"], timeout=5)


def test_run_timeout_kills_the_process_tree(tmp_path: Path) -> None:
    marker = tmp_path / "child-alive"
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        run(["sh", "-c", f"(sleep 3; touch {marker}) & sleep 30"], timeout=0.5)
    assert time.monotonic() - start < 5
    time.sleep(3.5)
    assert not marker.exists(), "the grandchild survived the timeout"


def test_run_logged_streams_lines_and_names_log(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    seen: list[str] = []
    run_logged(["sh", "-c", "echo one; echo two"], log=log, timeout=10, on_line=seen.append)
    assert seen == ["one", "two"]
    with pytest.raises(CommandError) as info:
        run_logged(["sh", "-c", "echo nope; exit 2"], log=log, timeout=10, what="step x")
    assert "step x" in str(info.value) and str(log) in (info.value.hint or "")
    assert "nope" in log.read_text()


def test_run_logged_timeout_on_silent_process(tmp_path: Path) -> None:
    with pytest.raises(CommandTimeout):
        run_logged(["sleep", "30"], log=tmp_path / "l", timeout=0.5)


def test_run_streaming_hands_lines_over_and_writes_replies_to_stdin() -> None:
    """The caller answers a line while the command waits for it (the perftest's go)."""
    seen: list[str] = []

    def on_line(line: str) -> str | None:
        seen.append(line)
        return "go\n" if line == "ready" else None

    script = "echo ready; read word; echo got $word; echo warn >&2"
    result = run_streaming(["sh", "-c", script], on_line, timeout=20)
    assert seen == ["ready", "got go"]
    assert result.stdout == "ready\ngot go\n" and result.stderr == "warn\n"
    with pytest.raises(CommandError, match="exit 3"):
        run_streaming(["sh", "-c", "echo x >&2; exit 3"], on_line, timeout=20)


def test_run_streaming_callback_error_and_timeout_kill_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"

    def refuse(line: str) -> str | None:
        raise ValueError(f"cannot start the load after {line!r}")

    with pytest.raises(ValueError, match="cannot start the load"):
        run_streaming(["sh", "-c", f"echo ready; sleep 2; touch {marker}"], refuse, timeout=20)
    with pytest.raises(CommandTimeout):
        run_streaming(["sh", "-c", f"sleep 2; touch {marker}"], lambda _: None, timeout=0.5)
    time.sleep(2.5)
    assert not marker.exists(), "the command survived"


def test_background_stops_process() -> None:
    with background(["sleep", "60"]) as proc:
        assert proc.poll() is None
    assert proc.poll() is not None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    count: int = Field(gt=0)
    items: list[int] = []


def test_config_error_names_file_line_key(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: a\ncount: 1\nitems:\n  - 1\n  - nope\n")
    with pytest.raises(ConfigError) as info:
        load_model(_Model, path)
    assert str(info.value).startswith(f"{path}:5: items.1:")


def test_config_unknown_key_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: a\ncount: 1\ncolour: red\n")
    with pytest.raises(ConfigError, match=r"x.yaml:3: colour: unknown key"):
        load_model(_Model, path)
    path.write_text("name: a\n")
    with pytest.raises(ConfigError, match=r"count: required key is missing"):
        load_model(_Model, path)


def test_config_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: [a\ncount: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model(_Model, path)
    with pytest.raises(ConfigError, match="no such file"):
        load_model(_Model, tmp_path / "missing.yaml")


def test_config_refuses_python_tags(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\ncount: 1\n")
    with pytest.raises(ConfigError):
        load_model(_Model, path)


def test_cli_reports_one_line_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    parser_error = None
    try:
        cli.main(["no-such-command"])
    except SystemExit as exc:
        parser_error = exc.code
    assert parser_error == 2


def test_local_executor_roundtrip(tmp_path: Path) -> None:
    from kvmple.executor import Executor, LocalExecutor

    executor = LocalExecutor()
    assert isinstance(executor, Executor)
    src = tmp_path / "a"
    src.write_text("hello")
    executor.put(src, str(tmp_path / "sub" / "b"), mode=0o600)
    assert (tmp_path / "sub" / "b").stat().st_mode & 0o777 == 0o600
    assert executor.run(["cat", str(tmp_path / "sub" / "b")], timeout=5).stdout == "hello"


@pytest.mark.parametrize(("command", "resume_hint"), [("run", True), ("lab", False)])
def test_ctrl_c_hint_names_resume_only_for_a_campaign(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    resume_hint: bool,
) -> None:
    # Ctrl-C during 'lab up' used to end with "a campaign can continue with 'kvmple run
    # --resume ID'": there is no campaign to resume there
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    def parser(commands: object = ()) -> argparse.ArgumentParser:
        top = argparse.ArgumentParser(prog="kvmple")
        top.add_argument("--debug", action="store_true")
        sub = top.add_subparsers(dest="command")
        sub.add_parser(command).set_defaults(handler=interrupted)
        return top

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main([command]) == 130
    err = capsys.readouterr().err
    assert "kvmple: error: interrupted; everything kvmple started was cleaned up" in err
    assert ("--resume" in err) is resume_hint

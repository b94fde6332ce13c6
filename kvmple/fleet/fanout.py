"""Fan a campaign out to every host of an inventory: copy the playbook over SFTP, run
``kvmple run --json`` there with the shared store URL, collect exit codes and campaign
outcomes (the JSON Lines of docs/run-json.md, read as RunOutcome). One thread per host (at
most ``parallel``), each with its own SSH connection; a host's output goes to a log file per
host."""

from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kvmple.campaign.outcome import RunOutcome
from kvmple.errors import CommandTimeout, GuestError, InputError, Interrupted, KvmpleError
from kvmple.executor import Executor
from kvmple.fleet.inventory import FleetHost, Inventory
from kvmple.keys import installation_key
from kvmple.remote import SSHExecutor

# A campaign that stops prints no --json document (docs/run-json.md); its error's hint names
# the campaign when runs were stored: the one place the id is then written.
_RESUME = re.compile(r"kvmple run --resume (\S+)")


@dataclass(frozen=True)
class HostOutcome:
    host: str
    exit_code: int  # kvmple's exit code there; -1: never ran (connection/copy failed)
    campaign_id: str | None
    seconds: float
    message: str
    log: Path
    run: RunOutcome | None = None  # what the host's kvmple run reported (None: no document)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def read_outcomes(stdout: str, source: str) -> list[RunOutcome]:
    """The documents ``kvmple run --json`` printed on ``stdout`` (one JSON object per line,
    docs/run-json.md), in order. InputError naming ``source``, the line and the key when a
    line is not such a document (e.g. a kvmple too old for --json, or of a newer schema)."""
    return [
        RunOutcome.from_json(
            line, f"{source}, stdout line {number}", hint="is kvmple the same version there?"
        )
        for number, line in enumerate(stdout.splitlines(), 1)
        if line.strip()
    ]


def resumable_campaign(stderr: str) -> str | None:
    """The campaign a failed ``kvmple run`` stored runs of, from its error's
    ``kvmple run --resume ID`` hint (no --json document is printed then)."""
    hint = _RESUME.findall(stderr)
    return str(hint[-1]) if hint else None


def remote_argv(
    host: FleetHost, playbook: str, db_url: str | None, allow_unavailable: bool
) -> list[str]:
    """``kvmple run`` as the host runs it (pure)."""
    argv = [*host.kvmple, "run", playbook, "--no-report", "--json"]
    if db_url:
        argv += ["--db", db_url]
    if allow_unavailable:
        argv.append("--allow-unavailable")
    return argv


ConnectFn = Callable[[str, FleetHost], Executor]


def default_connect(name: str, host: FleetHost) -> Executor:
    key = host.key or installation_key().private
    return SSHExecutor(host.address, host.port, host.user, key, host.host_keys, name)


def _one_host(
    name: str,
    host: FleetHost,
    *,
    playbook: Path,
    db_url: str | None,
    allow_unavailable: bool,
    timeout: float,
    log: Path,
    connect: ConnectFn,
) -> HostOutcome:
    start = time.monotonic()
    executor: Executor | None = None

    def done(
        code: int, campaign: str | None, message: str, run: RunOutcome | None = None
    ) -> HostOutcome:
        seconds = round(time.monotonic() - start, 1)
        return HostOutcome(name, code, campaign, seconds, message, log, run)

    with log.open("w", encoding="utf-8") as out:
        try:
            executor = connect(name, host)
            remote_playbook = f"{host.workdir.rstrip('/')}/{playbook.name}"
            executor.run(["mkdir", "-p", host.workdir], timeout=60, what="mkdir workdir")
            executor.put(playbook, remote_playbook, 0o644)
            argv = remote_argv(host, remote_playbook, db_url, allow_unavailable)
            out.write(f"$ {shlex.join(argv)}  [on {name}]\n")
            out.flush()
            result = executor.run(
                argv, timeout=timeout, check=False, env=host.env or None, what="kvmple run"
            )
        except CommandTimeout as exc:
            out.write(f"TIMEOUT: {exc.message}\n")
            return done(6, None, f"timed out after {timeout:g}s")
        except (GuestError, KvmpleError) as exc:
            out.write(f"FAILED: {exc.message}\n")
            return done(-1, None, exc.message)
        finally:
            close = getattr(executor, "close", None)
            if callable(close):
                close()
        out.write(result.stdout)
        out.write("\n--- stderr ---\n" + result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("kvmple: error:")]
    message = lines[-1].removeprefix("kvmple: error: ") if lines else ""
    try:
        runs = read_outcomes(result.stdout, f"{name}: kvmple run --json")
    except InputError as exc:
        runs, message = [], message or exc.message
    # one campaign per host (fleet playbooks have no workload axis): the last document
    run = runs[-1] if runs else None
    campaign = run.campaign_id if run else resumable_campaign(result.stderr)
    if result.ok and run is None and not message:
        message = "kvmple run --json printed no outcome document"
    return done(result.returncode, campaign, message or ("ok" if result.ok else "failed"), run)


class _Connections:
    """The hosts' live SSH connections, so Ctrl-C can cut them all (threads cannot be
    interrupted otherwise)."""

    def __init__(self, connect: ConnectFn) -> None:
        self._connect = connect
        self._live: list[Executor] = []
        self._lock = threading.Lock()
        self.cancelled = False

    def __call__(self, name: str, host: FleetHost) -> Executor:
        with self._lock:
            if self.cancelled:
                raise Interrupted(f"{name}: not started (interrupted)")
            executor = self._connect(name, host)
            self._live.append(executor)
            return executor

    def cut(self) -> None:
        with self._lock:
            self.cancelled = True
            live, self._live = self._live, []
        for executor in live:
            close = getattr(executor, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()


def run_fleet(
    inventory: Inventory,
    playbook: Path,
    *,
    db_url: str | None = None,
    allow_unavailable: bool = False,
    hosts: Sequence[str] | None = None,
    log_dir: Path,
    connect: ConnectFn = default_connect,
) -> list[HostOutcome]:
    """Run ``playbook`` on every host (or the named ones), in parallel up to
    ``inventory.parallel``; outcomes in inventory order.

    Ctrl-C cuts every SSH connection and raises Interrupted. The remote commands are not
    killed: a campaign already running on a host loses its connection and may go on or stop
    at its next output; either way its stored runs stay in the shared store and
    ``kvmple run --resume ID`` on that host continues it.
    """
    chosen = list(hosts) if hosts else list(inventory.hosts)
    url = db_url or inventory.store
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = min(inventory.parallel or len(chosen), len(chosen))
    connections = _Connections(connect)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fleet")
    try:
        futures = [
            pool.submit(
                _one_host,
                name,
                inventory.hosts[name],
                playbook=playbook,
                db_url=url,
                allow_unavailable=allow_unavailable,
                timeout=inventory.timeout,
                log=log_dir / f"{name}.log",
                connect=connections,
            )
            for name in chosen
        ]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        connections.cut()
        pool.shutdown(wait=True, cancel_futures=True)
        raise Interrupted(
            "fleet run interrupted: every SSH connection was cut",
            hint=f"per-host logs in {log_dir}; on a host whose campaign stopped, "
            "'kvmple run --resume ID' continues it",
        ) from None
    finally:
        pool.shutdown(wait=True)

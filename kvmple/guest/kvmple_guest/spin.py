"""kvmple-spin: user-space busy loops, each pinned to its own vCPU (kvmple guest program).

  kvmple-spin start N [--cpus 0,1]   start N infinite loops (N=0 is valid), detached
  kvmple-spin status [--sample S]    JSON: per loop pid, pinned CPU, CPU share over S seconds
  kvmple-spin stop                   stop them and wait until they are gone (idempotent)
  kvmple-spin hold N [--cpus 0,1]    held loops, driven over stdin (what campaigns use):
                                     prints KVMPLE-SPIN-ARMED, starts the loops on "start",
                                     prints KVMPLE-SPIN-RUNNING {json}, stops them on "stop"
                                     (or EOF), then prints the status over their lifetime

The loops are plain `while True: pass` pinned with sched_setaffinity (what taskset does),
stdio on /dev/null. Started by `start`, they run in their own session so the SSH command that
started them returns. Held, they run as SCHED_IDLE (the guest's own tasks, such as the sshd
carrying the next word, preempt them; the vCPU stays busy) and die with the hold process
(PR_SET_PDEATHSIG): a controller that goes away (channel closed, process killed) never
leaves loops behind, and "start" and "stop" cost one line on an open channel instead of a
program start on starved vCPUs. Their pids and start times are kept in a state file so stop
never kills a reused pid.
Runs with only python3 (stdlib). Exit codes (protocol.SpinExit): 0 ok, 1 failed (reason on
stderr), 2 bad usage. The words, markers and JSON keys are protocol.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from .protocol import (
    SPIN,
    SPIN_ARMED_LINE,
    SPIN_ERROR_PREFIX,
    SPIN_RUNNING_TAG,
    SPIN_START_WORD,
    SPIN_STATE,
    VERSION,
    LoopStatusRecord,
    SpinExit,
    SpinLoop,
    SpinStatusRecord,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1  # prctl(2)


class Failed(Exception):
    pass


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def alive(loop: SpinLoop) -> bool:
    fields = stat_fields(loop["pid"])
    if not fields:
        return False
    # A zombie (Z) or a different process under a reused pid does not count.
    return fields[0] != "Z" and int(fields[19]) == loop["start"]


def load(path: str) -> list[SpinLoop]:
    try:
        with open(path) as f:
            return list(json.load(f)["loops"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError) as exc:
        raise Failed(f"unreadable state file {path}: {exc}") from None


def save(path: str, loops: list[SpinLoop]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"version": VERSION, "loops": loops}, f)
    os.replace(tmp, path)


def spin_forever(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def launch(cpu: int) -> SpinLoop:
    """Start one detached loop pinned to ``cpu``; return its pid and start time."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate: new session, fork the loop, exit
        try:
            os.close(read_end)
            os.setsid()
            loop = os.fork()
            if loop == 0:
                os.close(write_end)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                spin_forever(cpu)
            os.write(write_end, str(loop).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(child, 0)
    if not text:
        raise Failed(f"could not start a loop on CPU {cpu}")
    pid = int(text)
    # Wait until the loop has pinned itself, so status never sees it unpinned.
    deadline = time.monotonic() + 5
    while os.sched_getaffinity(pid) != {cpu}:
        if time.monotonic() > deadline:
            raise Failed(f"loop {pid} did not pin itself to CPU {cpu}")
        time.sleep(0.01)
    start = start_time(pid)
    if start is None:
        raise Failed(f"loop {pid} for CPU {cpu} died at start")
    return {"pid": pid, "cpu": cpu, "start": start}


def parse_cpus(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated CPU list: {text!r}") from None


def check_request(opts: argparse.Namespace) -> list[int]:
    """The vCPUs the loops go to, after refusing what cannot work (also running loops)."""
    running = [loop for loop in load(opts.state) if alive(loop)]
    if running:
        raise Failed(
            f"{len(running)} loops already running (pids "
            f"{', '.join(str(loop['pid']) for loop in running)}); run 'kvmple-spin stop' first"
        )
    online = sorted(os.sched_getaffinity(0))
    cpus: list[int] = opts.cpus if opts.cpus is not None else online[: opts.loops]
    if opts.loops < 0:
        raise Failed(f"the number of loops cannot be negative ({opts.loops})")
    if opts.loops > len(online):
        raise Failed(
            f"{opts.loops} loops need {opts.loops} vCPUs (one each) but only {len(online)} "
            f"are online ({','.join(map(str, online))})"
        )
    if len(cpus) != opts.loops:
        raise Failed(f"--cpus names {len(cpus)} CPUs for {opts.loops} loops")
    if len(set(cpus)) != len(cpus):
        raise Failed(f"--cpus repeats a CPU: {cpus}; each loop gets its own vCPU")
    bad = [c for c in cpus if c not in online]
    if bad:
        raise Failed(f"CPUs {bad} are not online here (online: {online})")
    return cpus


def cmd_start(opts: argparse.Namespace) -> dict[str, Any]:
    cpus = check_request(opts)
    loops: list[SpinLoop] = []
    try:
        for cpu in cpus:
            loops.append(launch(cpu))
    except BaseException:
        stop_loops(loops)
        raise
    save(opts.state, loops)
    return {"started": len(loops), "loops": loops}


def die_with_parent() -> None:
    """In a held loop: SIGKILL when the hold process dies, however it dies."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(1)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def launch_held(cpu: int) -> SpinLoop:
    """Start one loop pinned to ``cpu`` as a child that dies with this process."""
    pid = os.fork()
    if pid == 0:
        try:
            die_with_parent()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # SCHED_IDLE: inside this guest anything else that wakes (sshd carrying the
            # "stop", this program) runs at once, while the vCPU stays 100% busy, which is
            # all the host (and PLE) sees. As plain tasks, a "stop" once took 15 s to act.
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            spin_forever(cpu)
        finally:
            os._exit(1)
    deadline = time.monotonic() + 5
    while True:
        try:
            if os.sched_getaffinity(pid) == {cpu}:
                break
        except OSError:
            raise Failed(f"loop {pid} for CPU {cpu} died at start") from None
        if time.monotonic() > deadline:
            raise Failed(f"loop {pid} did not pin itself to CPU {cpu}")
        time.sleep(0.005)
    start = start_time(pid)
    if start is None:
        raise Failed(f"loop {pid} for CPU {cpu} died at start")
    return {"pid": pid, "cpu": cpu, "start": start}


def cmd_hold(opts: argparse.Namespace) -> dict[str, Any] | SpinStatusRecord:
    cpus = check_request(opts)
    print(SPIN_ARMED_LINE, flush=True)
    word = sys.stdin.readline().strip()
    if word != SPIN_START_WORD:  # EOF or anything else: the controller called it off
        return {"started": 0, "called_off": word or "end of input"}
    loops: list[SpinLoop] = []
    try:
        cpus0 = cpu_jiffies()
        t0 = time.monotonic()
        for cpu in cpus:
            loops.append(launch_held(cpu))
        save(opts.state, loops)
        print(f"{SPIN_RUNNING_TAG} {json.dumps({'loops': loops}, sort_keys=True)}", flush=True)
        sys.stdin.readline()  # "stop", or EOF when the controller went away: stop either way
        # over the loops' whole lifetime: each started with 0 CPU ticks
        report = loops_report(loops, {loop["pid"]: 0 for loop in loops}, cpus0, t0)
    finally:
        stop_loops(loops)
        for loop in loops:  # our children: reap them
            with contextlib.suppress(ChildProcessError):
                os.waitpid(loop["pid"], 0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(opts.state)
    return report


def cpu_jiffies() -> dict[int, int]:
    """Per CPU, all jiffies accounted so far (user..steal) from /proc/stat."""
    found = {}
    with open("/proc/stat") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name[3:].isdigit():
                found[int(name[3:])] = sum(int(v) for v in rest.split()[:8])
    return found


def cmd_status(opts: argparse.Namespace) -> SpinStatusRecord:
    loops = load(opts.state)
    before: dict[int, int | None] = {}
    for loop in loops:
        fields = stat_fields(loop["pid"]) if alive(loop) else None
        before[loop["pid"]] = int(fields[11]) + int(fields[12]) if fields else None
    cpus0 = cpu_jiffies()
    t0 = time.monotonic()
    time.sleep(opts.sample)
    return loops_report(loops, before, cpus0, t0)


def loops_report(
    loops: list[SpinLoop], before: dict[int, int | None], cpus0: dict[int, int], t0: float
) -> SpinStatusRecord:
    """Per loop, from ``t0`` to now: its CPU share of wall time ("busy", lower when the host
    starves the vCPU) and of what its vCPU accounted ("share", ~1.0 when nothing else runs
    there), pinning, and whether it still runs. ``before``: each loop's CPU ticks at t0
    (None: it was not running then)."""
    elapsed = time.monotonic() - t0
    cpus1 = cpu_jiffies()
    report: list[LoopStatusRecord] = []
    for loop in loops:
        fields = stat_fields(loop["pid"]) if alive(loop) else None
        entry: LoopStatusRecord = {
            "pid": loop["pid"],
            "cpu": loop["cpu"],
            "running": False,
            "busy": 0.0,
            "share": 0.0,
            "affinity": [],
            "last_cpu": None,
        }
        ticks = before.get(loop["pid"])
        if fields and ticks is not None:
            used = int(fields[11]) + int(fields[12]) - ticks
            accounted = cpus1.get(loop["cpu"], 0) - cpus0.get(loop["cpu"], 0)
            entry["running"] = True
            entry["busy"] = round(used / CLK_TCK / elapsed, 4) if elapsed > 0 else 0.0
            entry["share"] = round(min(1.0, used / accounted), 4) if accounted > 0 else 0.0
            entry["affinity"] = sorted(os.sched_getaffinity(loop["pid"]))
            entry["last_cpu"] = int(fields[36])  # field 39: processor it last ran on
        report.append(entry)
    return {"sample_s": round(elapsed, 4), "loops": report}


def stop_loops(loops: list[SpinLoop]) -> int:
    live = [loop for loop in loops if alive(loop)]
    for loop in live:
        try:
            os.kill(loop["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(loop) for loop in live):
        if time.monotonic() > deadline:
            left = [loop["pid"] for loop in live if alive(loop)]
            raise Failed(f"loops {left} did not exit within 10 s of SIGKILL")
        time.sleep(0.02)
    return len(live)


def cmd_stop(opts: argparse.Namespace) -> dict[str, Any]:
    loops = load(opts.state)
    stopped = stop_loops(loops)
    try:
        os.unlink(opts.state)
    except FileNotFoundError:
        pass
    return {"stopped": stopped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=SPIN, description=(__doc__ or "").split("\n")[0])
    p.add_argument("--version", action="version", version=f"{SPIN} {VERSION}")
    p.add_argument("--state", default=SPIN_STATE, help="where the loops' pids are kept")
    sub = p.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start N pinned busy loops")
    start.add_argument("loops", type=int)
    start.add_argument("--cpus", type=parse_cpus, default=None, help="e.g. 0,1 (default 0..N-1)")
    status = sub.add_parser("status", help="CPU share of each loop over --sample seconds")
    status.add_argument("--sample", type=float, default=1.0)
    sub.add_parser("stop", help="stop all loops started from this state file")
    hold = sub.add_parser("hold", help="N loops started and stopped by words on stdin")
    hold.add_argument("loops", type=int)
    hold.add_argument("--cpus", type=parse_cpus, default=None, help="e.g. 0,1 (default 0..N-1)")
    opts = p.parse_args(argv)
    result: Mapping[str, object]
    try:
        if opts.action == "start":
            result = cmd_start(opts)
        elif opts.action == "hold":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: loops stopped
            signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
            result = cmd_hold(opts)
        elif opts.action == "status":
            if not opts.sample > 0:
                raise Failed(f"--sample must be greater than 0, got {opts.sample}")
            result = cmd_status(opts)
        else:
            result = cmd_stop(opts)
    except (Failed, OSError) as exc:
        print(f"{SPIN_ERROR_PREFIX} {exc}", file=sys.stderr)
        return SpinExit.FAILED
    print(json.dumps(result, sort_keys=True))
    return SpinExit.OK

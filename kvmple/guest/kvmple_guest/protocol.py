"""The wire protocol between kvmple (host) and its guest programs, defined once.

Shipped into every guest next to the programs (``/opt/kvmple/bin/kvmple_guest/``) and
imported by the host side (kvmple.workloads) as ``kvmple.guest.kvmple_guest.protocol``, so
the markers, words, exit codes and JSON keys below cannot drift apart. Runs in the guest's
own ``/usr/bin/python3`` (Debian 12: Python 3.11): standard library only.

Two programs speak it:

- kvmple-perftest (AMQP throughput): with ``--wait-go`` it prints ``READY_LINE`` once its
  clients are connected and waits for ``GO_WORD`` on stdin; after its last timed window it
  prints ``WINDOW_END_LINE``; with ``--machine`` it ends with one
  ``RESULT_TAG {json}`` line (a ``PerftestRecord``). Failures are one
  ``kvmple-perftest: error: ...`` line on stderr and an exit code of ``PerftestExit``.
- kvmple-spin (busy loops): ``hold`` prints ``SPIN_ARMED_LINE``, starts its loops on
  ``SPIN_START_WORD`` (any other line or end of input calls them off), prints
  ``SPIN_RUNNING_TAG {json}`` and stops them on the next line; every action prints one JSON
  line (``SpinStatusRecord`` for status and hold). Exit codes: ``SpinExit``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NotRequired, TypedDict

# Kept equal to kvmple.__version__ (a unit test checks it): a guest holding programs of
# another version is spotted by the record's "version".
VERSION = "0.1.0"

# --------------------------------------------------------------------------- kvmple-perftest

PERFTEST = "kvmple-perftest"
RESULT_TAG = "KVMPLE-PERFTEST"
READY_LINE = f"{RESULT_TAG}-READY"  # --wait-go: the clients are ready, waiting for the word
WINDOW_END_LINE = f"{RESULT_TAG}-WINDOW-END"  # --wait-go: the last timed window is over
GO_WORD = "go"  # the word on stdin that starts the timed window (anything else calls it off)
ERROR_PREFIX = f"{PERFTEST}: error:"  # the first words of every failure line on stderr
RECORD_FORMAT = 1  # the RESULT_TAG record's "format"; the host refuses any other
QUEUE_PREFIX = PERFTEST  # queues and exchanges the program declares start with this


class PerftestExit(IntEnum):
    """kvmple-perftest's exit codes."""

    OK = 0
    FAILED = 1  # the run failed for the reason on stderr
    USAGE = 2  # bad options (argparse's own code)
    TIMEOUT = 3  # a client or the broker did not finish in time
    INTERRUPTED = 130  # SIGINT


class CpuRecord(TypedDict):
    """The guest's CPU time over one measurement window, split by who used it.

    ``broker``/``clients``/``idle``/``other`` are fractions of the window's capacity (online
    CPUs x wall time) and sum to ~1; the ``*_s`` figures are CPU seconds."""

    window_s: float
    ncpu: int
    broker_s: float
    clients_s: float
    idle_s: float
    broker_found: bool
    broker: float
    clients: float
    idle: float
    other: float


class IterationRecord(TypedDict):
    """One iteration's figures (transfers count sends and receives)."""

    transfers: int
    sent: int
    received: int
    seconds: float
    pub_rates: list[float]
    sub_rates: list[float]
    pubs_per_sec: float
    subs_per_sec: float
    transfers_per_sec: float
    mbytes_per_sec: float
    lost: int
    duplicated: int
    cpu: CpuRecord
    # where the time around the window went (kvmple's own engine only)
    setup_s: NotRequired[float]
    go_wait_s: NotRequired[float]
    drain_s: NotRequired[float]


class PerftestParams(TypedDict):
    """The options a run used (qpid-perftest's names)."""

    npubs: int
    nsubs: int
    count: int
    size: int
    qt: int
    iterations: int
    mode: str


class PerftestRecord(TypedDict):
    """The ``RESULT_TAG`` line's JSON (``--machine``)."""

    format: int  # RECORD_FORMAT
    version: str  # VERSION of the program that printed it
    engine: str  # "kvmple", "naive" or "external"
    params: PerftestParams
    iterations: list[IterationRecord]  # empty for "external"
    phases_s: NotRequired[dict[str, float]]  # declare_s, cleanup_s, started_to_end_s
    command: NotRequired[list[str]]  # external: the command run
    exit: NotRequired[int]  # external: its exit code
    cpu: NotRequired[CpuRecord]  # external: the split around its whole run


# ------------------------------------------------------------------------------ kvmple-spin

SPIN = "kvmple-spin"
SPIN_STATE = "/run/kvmple-spin.json"  # where the loops' pids are kept by default
SPIN_ARMED_LINE = "KVMPLE-SPIN-ARMED"  # hold: ready, waiting for SPIN_START_WORD
SPIN_RUNNING_TAG = "KVMPLE-SPIN-RUNNING"  # hold: the loops run ({json}), waiting for a line
SPIN_START_WORD = "start"
SPIN_STOP_WORD = "stop"  # what the host sends; any line (or end of input) stops the loops
SPIN_CALL_OFF_WORD = "off"  # what the host sends instead of SPIN_START_WORD to call them off
SPIN_ERROR_PREFIX = f"{SPIN}: error:"


class SpinExit(IntEnum):
    """kvmple-spin's exit codes."""

    OK = 0
    FAILED = 1  # reason on stderr
    USAGE = 2  # argparse's own code


class SpinLoop(TypedDict):
    """One loop as started: its pid, its vCPU and its start time (clock ticks after boot,
    /proc/PID/stat field 22, so a reused pid is never taken for it)."""

    pid: int
    cpu: int
    start: int


class LoopStatusRecord(TypedDict):
    """One loop over a sample: ``busy`` is its share of wall time, ``share`` its share of
    what its vCPU accounted (~1.0 when nothing else runs there)."""

    pid: int
    cpu: int
    running: bool
    busy: float
    share: float
    affinity: list[int]
    last_cpu: int | None  # the processor it last ran on (field 39)


class SpinStatusRecord(TypedDict):
    """``status`` and ``hold``'s final line: every loop over ``sample_s`` seconds."""

    sample_s: float
    loops: list[LoopStatusRecord]

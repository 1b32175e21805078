"""What ``rollout serve`` asks of its host: open files and local ports enough for every
rollout's chat call (each holds one connection to its trainer), and a garbage collector
tuned for thousands of rollouts in flight."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

__all__ = [
    "GC_MIDDLE_THRESHOLD",
    "GC_YOUNG_THRESHOLD",
    "capacity_warnings",
    "ephemeral_ports",
    "raise_open_files_limit",
    "tune_gc",
    "warn_capacity",
]

#: Where Linux keeps the range of local ports it gives outgoing connections.
PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def raise_open_files_limit() -> int | None:
    """Raise this process's open-files limit to its hard limit: every rollout's chat call
    holds a connection, and 1024 (a common soft limit) would cap rollouts in flight.
    Returns the soft limit now in force (None: unlimited, or not on Unix)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return None if soft == resource.RLIM_INFINITY else soft
        logging.getLogger("rollout").debug("open files limit: %d (was %d)", target, soft)
        soft = target
    return None if soft == resource.RLIM_INFINITY else soft


def ephemeral_ports() -> tuple[int, int] | None:
    """The kernel's ephemeral port range, ``(first, last)`` inclusive, from
    :data:`PORT_RANGE_FILE`; None where it cannot be read (not Linux)."""
    try:
        first, last = map(int, PORT_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return None
    return first, last


def capacity_warnings(
    per_process: int,
    *,
    processes: int = 1,
    open_files: int | None,
    ports: tuple[int, int] | None,
) -> list[str]:
    """Why this host cannot hold every rollout's chat call at once, one line each (empty:
    it can). ``per_process`` is ``--max-concurrent`` (rollouts running at once in one
    process), ``processes`` the workers, ``open_files`` one process's open-files limit
    (None: unlimited), ``ports`` :func:`ephemeral_ports`.

    Each call holds a connection: a file, and a local port towards its trainer's address.
    Linux's ``connect()`` first tries the ports of one parity (half the range; the other
    half it keeps for ``bind()``). Past that half, every new connection scans the whole
    first half before it finds a port: 30-40x slower (a median of 0.65-0.68 ms instead of
    15-20 us at 15,000-19,000 connections, ``nox -s ports``), which stalls the event loop
    and shows as the ``202``'s tail latency (docs/PERFORMANCE.md). Past the whole range,
    connections fail.
    """
    warnings = []
    if open_files is not None and open_files < per_process:
        warnings.append(
            f"the open-files limit ({open_files:,}) is below --max-concurrent"
            f" ({per_process:,}), and each running rollout holds a connection to its"
            " trainer: raise it (ulimit -n, or LimitNOFILE= under systemd) or lower"
            " --max-concurrent"
        )
    total = per_process * processes
    if ports is not None:
        first, last = ports
        count = max(last - first + 1, 0)
        fast = (count + 1) // 2
        if total > fast:
            warnings.append(
                f"up to {total:,} rollouts may call one trainer address at once, but the"
                f" ephemeral port range {first}-{last} gives connect() {fast:,} ports"
                f" before each new connection scans the range (30-40x slower, seen as"
                f" latency) and {count:,} before connections fail: widen it, e.g."
                " sysctl -w net.ipv4.ip_local_port_range='1024 65535' (docs/DEPLOYMENT.md)"
            )
    return warnings


def warn_capacity(per_process: int, *, processes: int = 1) -> None:
    """Raise the open-files limit, then log each of :func:`capacity_warnings` for this
    host once, as a warning: the server still starts."""
    open_files = raise_open_files_limit()
    log = logging.getLogger("rollout")
    for warning in capacity_warnings(
        per_process, processes=processes, open_files=open_files, ports=ephemeral_ports()
    ):
        log.warning("%s", warning)


#: Allocations between two young-generation collections of the cyclic garbage collector
#: (CPython's default is 700). See :func:`tune_gc`.
GC_YOUNG_THRESHOLD = 10_000
#: Young collections between two of the middle generation (CPython's default is 10): with
#: :data:`GC_YOUNG_THRESHOLD`, one every 5,000,000 allocations. See :func:`tune_gc`.
GC_MIDDLE_THRESHOLD = 500


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server holding thousands of rollouts.

    With CPython's defaults, collections took ~18% of the server's CPU at 1,024 rollouts in
    flight, and their pauses were most of the ``202`` latency's spikes at thousands in
    flight (docs/PERFORMANCE.md): a young collection every 700 allocations, and each older
    one walking every object alive, imported modules included. Here: what exists once the
    agent is loaded is frozen (never walked again), young collections come every
    :data:`GC_YOUNG_THRESHOLD` allocations (a pause grows with it: 30-45 ms at 50,000 on
    the benchmark machine, under 25 ms at 10,000), the middle generation after
    :data:`GC_MIDDLE_THRESHOLD` of them (it walks every rollout's objects: rarely) and the
    oldest after 100 of those (CPython: 10 and 10). Reference counting still frees nearly
    everything at once; only reference cycles wait longer to be freed."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, 100)

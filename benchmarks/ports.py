"""What one more ``connect()`` to the same address costs as connections to it pile up: the
kernel's ephemeral port search, which every chat call's new connection to a trainer pays
(docs/DEPLOYMENT.md, "What to size"; docs/PERFORMANCE.md).

Another process accepts and holds every connection on a loopback port; this one opens
``--connections`` blocking connections to it, one at a time, and prints, per thousand, the
median and p99 time of ``connect()`` (microseconds) and how many of the local ports it got
were even. Linux gives ``connect()`` ports of the range's first parity first: past half the
range each ``connect()`` scans that half before it finds a port.

    uv run python benchmarks/ports.py --connections 19000
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

from rollout._cli.host import ephemeral_ports

_ACCEPTOR = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
print(listener.getsockname()[1], flush=True)
held = []
while True:
    held.append(listener.accept()[0])
"""


def _quantile_us(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)


@click.command()
@click.option("--connections", type=click.IntRange(1000, 60_000), default=19_000, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("ports-results.json"), show_default=True)  # fmt: skip
def main(connections: int, json_path: Path) -> None:
    """Time connect() to one loopback address, per thousand connections held."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the acceptor inherits it
    if hard != resource.RLIM_INFINITY and hard < connections + 64:
        raise click.UsageError(f"the open-files hard limit ({hard}) is below {connections} + 64")
    command = [sys.executable, "-c", _ACCEPTOR]
    acceptor = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    rows = []
    held: list[socket.socket] = []
    try:
        assert acceptor.stdout is not None
        address = ("127.0.0.1", int(acceptor.stdout.readline()))
        ports = ephemeral_ports()
        print(f"ephemeral ports: {ports}; {connections} connections to {address[0]}:{address[1]}")
        times: list[float] = []
        for i in range(connections):
            sock = socket.socket()
            began = time.perf_counter()
            sock.connect(address)
            times.append(time.perf_counter() - began)
            held.append(sock)
            if (i + 1) % 1000 == 0:
                last = held[-1000:]
                row = {
                    "connections": i + 1,
                    "connect_p50_us": _quantile_us(times, 0.5),
                    "connect_p99_us": _quantile_us(times, 0.99),
                    "even_ports": sum(1 for s in last if s.getsockname()[1] % 2 == 0),
                }
                rows.append(row)
                print(
                    f"{row['connections']:>6}: connect p50 {row['connect_p50_us']:>7} us,"
                    f" p99 {row['connect_p99_us']:>7} us, even ports {row['even_ports']}/1000"
                )
                times = []
    finally:
        for sock in held:
            sock.close()
        acceptor.kill()
        acceptor.wait()
    report = {"ephemeral_ports": list(ports or ()), "cores": os.cpu_count(), "rows": rows}
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {json_path}")


if __name__ == "__main__":
    main()

"""The least a rollout server must do, as the ceiling benchmarks/scale.py compares ours with.

A plain Trio + h11 HTTP/1.1 server: ``POST /v1/rollout/init`` is answered ``202`` with a
fixed tools list, and starts a task that calls the trainer's chat twice over a keep-alive
h11 connection pool, builds the tool messages in between (the calculator's four operations,
trivially), and posts the result JSON (stdlib json). No validation, no store, no retries.

    python benchmarks/_stub_server.py --port 0    # prints "listening on http://HOST:PORT"

A sibling module of scale.py (benchmarks/ is not a package); runs in its own process.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _h11_trainer import ClientPool, serve_http

_OPS = ("add", "subtract", "multiply", "divide")
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
    for name in _OPS
]


def _tool(name: str, arguments: str) -> str:
    """The calculator tool ``name`` on JSON ``arguments``, as the tool message's text."""
    args = json.loads(arguments)
    a, b = float(args["a"]), float(args["b"])
    value = {"add": a + b, "subtract": a - b, "multiply": a * b}.get(name)
    if value is None:
        value = a / b if b else float("nan")
    return str(int(value)) if value.is_integer() else str(value)


class StubServer:
    """The stub's state: one client pool per trainer ``host:port`` (``pool_size`` each)."""

    def __init__(self, nursery: trio.Nursery, pool_size: int) -> None:
        self._nursery = nursery
        self._pool_size = pool_size
        self._pools: dict[str, ClientPool] = {}

    async def handle(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        """Answer one request: ``202`` for an init (and start its rollout), else ``404``."""
        if method == "POST" and target == "/v1/rollout/init":
            init = json.loads(body)
            self._nursery.start_soon(self._rollout, init)
            return 202, json.dumps({"rollout_id": init["rollout_id"], "tools": TOOLS}).encode()
        if target == "/health":
            return 200, b'{"status":"healthy"}'
        return 404, b'{"detail":"not found"}'

    def _pool(self, server_url: str) -> ClientPool:
        if (pool := self._pools.get(server_url)) is None:
            parts = urlsplit(server_url)
            pool = ClientPool(parts.hostname or "127.0.0.1", parts.port or 80, self._pool_size)
            self._pools[server_url] = pool
        return pool

    async def _rollout(self, init: dict[str, Any]) -> None:
        pool = self._pool(init["server_url"])
        messages: list[dict[str, Any]] = list(init["messages"])
        request = {**init.get("completion_params", {}), "tools": TOOLS}
        request["rollout_id"] = init["rollout_id"]
        finish = "stop"
        for _turn in range(2):
            request["messages"] = messages
            _status, raw = await pool.post("/v1/chat/completions", json.dumps(request).encode())
            choice = json.loads(raw)["choices"][0]
            message, finish = choice["message"], choice["finish_reason"]
            messages.append(message)
            for call in message.get("tool_calls") or []:
                function = call["function"]
                content = _tool(function["name"], function["arguments"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
        result = {
            "rollout_id": init["rollout_id"],
            "status": "COMPLETED",
            "finish_reason": finish,
            "messages": messages,
            "metadata": init.get("metadata", {}),
        }
        await pool.post("/v1/rollout/completed", json.dumps(result).encode())


async def _main(host: str, port: int, pool_size: int) -> None:
    async with trio.open_nursery() as nursery:
        stub = StubServer(nursery, pool_size)
        bound = await nursery.start(
            functools.partial(serve_http, stub.handle, host=host, port=port)
        )
        print(
            f"stub rollout server listening on http://{host}:{bound}", file=sys.stderr, flush=True
        )


def main() -> None:
    """Serve until killed (SIGTERM ends the process; there is nothing to drain)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=256, help="connections per trainer")
    args = parser.parse_args()
    trio.run(_main, args.host, args.port, args.pool_size)


if __name__ == "__main__":
    main()

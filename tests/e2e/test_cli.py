"""The command line's errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import sys

import trio

from conftest import PROCESS_TIMEOUT


async def _rollout(*args: str) -> tuple[int, str]:
    with trio.fail_after(PROCESS_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "rollout", *args], capture_stderr=True, check=False
        )
    return done.returncode, done.stderr.decode()


async def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await _rollout("serve", "--host", "127.0.0.1", "--port", str(port))

    assert code == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


async def test_an_agent_that_cannot_be_loaded_is_a_usage_error() -> None:
    code, stderr = await _rollout("serve", "-m", "no_such_module:agent")

    assert code == 2
    assert "cannot import 'no_such_module'" in stderr
    assert "Traceback" not in stderr

"""``rollout serve --reload``: a change to the agent's source restarts the server with the
new code (watchfiles, in a real process)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import trio

from conftest import PROCESS_TIMEOUT

README = Path(__file__).parents[2] / "README.md"
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) \(agent (\w+)")


async def test_a_changed_agent_is_served_after_a_restart(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    command = [sys.executable, "-m", "rollout", "serve", "-m", "weather:agent"]
    command += ["--host", "127.0.0.1", "-p", "0", "--store", "memory", "--reload"]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, cwd=tmp_path, stderr=subprocess.PIPE, check=False)
        )
        assert process.stderr is not None
        output = b""

        async def next_listening(after: int) -> tuple[int, str]:
            nonlocal output
            with trio.fail_after(PROCESS_TIMEOUT):
                while len(found := LISTENING.findall(output)) <= after:
                    output += await process.stderr.receive_some()  # type: ignore[union-attr]
            port, name = found[after]
            return int(port), name.decode()

        try:
            port, name = await next_listening(0)
            assert name == "weather"
            (tmp_path / "weather.py").write_text(code.replace('name="weather"', 'name="weather2"'))
            port, name = await next_listening(1)
            assert name == "weather2"
            async with httpx.AsyncClient() as client:
                health = (await client.get(f"http://127.0.0.1:{port}/health")).json()
            assert health["agent_loop"] == "weather2"
            assert b"reload: weather.py changed, restarting the server" in output
        finally:
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(PROCESS_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()

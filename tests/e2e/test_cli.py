"""The command line's errors: one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from conftest import PROCESS_TIMEOUT

README = Path(__file__).parents[2] / "README.md"


async def _rollout(*args: str, store: str = "memory") -> tuple[int, str]:
    env = {**os.environ, "ROLLOUT_SERVER_STORE": store}
    with trio.fail_after(PROCESS_TIMEOUT):
        done = await trio.run_process(
            [sys.executable, "-m", "rollout", *args], capture_stderr=True, check=False, env=env
        )
    return done.returncode, done.stderr.decode()


async def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """With the SQLite store too: its writer, cancelled with the server, must not leave a
    caller waiting (the server once hung here instead of exiting)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await _rollout(
            "serve", "--host", "127.0.0.1", "--port", str(port), store=f"sqlite:{tmp_path}/s.db"
        )

    assert code == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


async def test_an_agent_that_cannot_be_loaded_is_a_usage_error() -> None:
    code, stderr = await _rollout("serve", "-m", "no_such_module:agent")

    assert code == 2
    assert "cannot import 'no_such_module'" in stderr
    assert "Traceback" not in stderr


async def test_the_readme_agent_is_served_from_the_current_directory(tmp_path: Path) -> None:
    """``rollout serve -m weather:agent`` (the console script, not ``python -m``) finds
    ./weather.py, as the README says."""
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    script = Path(sys.executable).parent / "rollout"
    command = [str(script), "serve", "-m", "weather:agent", "--host", "127.0.0.1", "--port", "0"]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(trio.run_process, command, cwd=tmp_path, stderr=subprocess.PIPE, check=False)
        )
        assert process.stderr is not None
        output = b""
        with trio.fail_after(PROCESS_TIMEOUT):
            while b"listening on" not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output.decode(errors="replace")
                output += chunk
        process.terminate()

    assert b"(agent weather," in output


async def test_a_store_that_cannot_be_used_is_one_clear_line(tmp_path: Path) -> None:
    open_to_others = tmp_path / "shared.db"
    open_to_others.touch()
    open_to_others.chmod(0o644)
    for store, expected in [
        ("postgres://user:hunter2@db/x", "unknown store 'postgres'"),
        ("redis://:hunter2@127.0.0.1:9/0", "store redis://***@127.0.0.1:9/0"),
        (f"sqlite:{open_to_others}", "chmod 600"),
        ("sqlite:", "needs a path"),
    ]:
        code, stderr = await _rollout("serve", "--port", "0", store=store)
        assert code == 1, stderr
        assert expected in stderr
        assert "Traceback" not in stderr
        assert "hunter2" not in stderr

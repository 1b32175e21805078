"""scripts/start_test_environment.sh and stop_test_environment.sh: both processes up and
healthy, a second start refused, a port in use refused, everything stopped."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import trio

from conftest import PROCESS_TIMEOUT

SCRIPTS = Path(__file__).parents[2] / "scripts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _script(name: str, env: dict[str, str]) -> tuple[int, str]:
    with trio.fail_after(PROCESS_TIMEOUT * 2):
        done = await trio.run_process(
            [str(SCRIPTS / name)],
            env={**os.environ, **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def test_start_check_refuse_and_stop(tmp_path: Path) -> None:
    trainer_port, server_port = _free_port(), _free_port()
    env = {
        "LOG_DIR": str(tmp_path / "logs"),
        "MOCK_TRAINER_PORT": str(trainer_port),
        "ROLLOUT_SERVER_PORT": str(server_port),
    }
    status, output = await _script("start_test_environment.sh", env)
    try:
        assert status == 0, output
        async with httpx.AsyncClient(timeout=10.0) as client:
            for port in (trainer_port, server_port):
                assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        again, output = await _script("start_test_environment.sh", env)
        assert again == 1
        assert "already running" in output
        pids = [int(p) for p in (tmp_path / "logs" / "test_environment.pid").read_text().split()]
        assert len(pids) == 2
    finally:
        stopped, output = await _script("stop_test_environment.sh", env)
    assert stopped == 0, output
    assert not (tmp_path / "logs" / "test_environment.pid").exists()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"process {pid} still runs")
    assert "listening on" in (tmp_path / "logs" / "rollout_server.log").read_text()


async def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "LOG_DIR": str(tmp_path / "logs"),
            "MOCK_TRAINER_PORT": str(port),
            "ROLLOUT_SERVER_PORT": str(_free_port()),
        }
        status, output = await _script("start_test_environment.sh", env)
    assert status == 1
    assert f"port {port} is in use" in output
    assert not (tmp_path / "logs" / "test_environment.pid").exists()

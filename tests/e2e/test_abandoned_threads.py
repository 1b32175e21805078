"""A sync tool that hangs past the rollout's deadline: the rollout ends on time, its thread
is abandoned, counted in /health until it returns, and logged."""

from __future__ import annotations

import threading

import pytest
import trio

from conftest import StartServer, Trainer, init_body, run_to_result
from rollout import Agent, RolloutContext, tool


async def test_a_hung_sync_tool_is_abandoned_counted_and_logged(
    start_server: StartServer, trainer: Trainer, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    @tool
    def add(a: float, b: float) -> str:
        """Adds, but blocks until the test releases it.

        Args:
            a: first.
            b: second.
        """
        release.wait(timeout=30)
        return str(a + b)

    async def loop(ctx: RolloutContext) -> None:
        message = await ctx.chat()
        await ctx.call_tools(message)

    server = await start_server(agent=Agent("hangs", tools=[add], loop=loop), rollout_timeout=1.0)
    trainer.mock.behaviour = "always_tools"
    before = (await server.health())["abandoned_threads"]
    try:
        result = await run_to_result(server, trainer, init_body(trainer))
        assert result["finish_reason"] == "timeout"
        assert (await server.health())["abandoned_threads"] == before + 1
        assert "tool 'add' is still running after its rollout was cancelled" in caplog.text
    finally:
        release.set()
    with trio.fail_after(10):
        while (await server.health())["abandoned_threads"] != before:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert "tool 'add' returned after its rollout had moved on" in caplog.text

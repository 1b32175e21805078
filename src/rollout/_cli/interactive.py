"""``rollout test -i``: step through each LLM call of each row, in a terminal.

Rows run one at a time through the server's lifecycle; before every chat request the
stepper shows what is new in the history (the user's prompt, tool results) and what will be
sent, and asks: ``n`` next call, ``c`` continue this row without stopping, ``s`` skip the
rest of this row, ``j N`` jump to row N, ``q`` quit. After the call it shows the answer and
its tool calls. Every row still ends in a result (a skipped one as ``ERROR``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import trio
from rich.console import Console
from rich.text import Text

from .. import _local
from .._dataset import Problem
from .._json import JSON
from .._server.lifecycle import RunControl, run_rollout
from .._server.phases import Tally
from .._trainer.chat import Completion
from .._trainer.client import TrainerClient
from .._trainer.transport import ClientTransport
from .._wire import codec
from ..agent import Agent
from ..errors import AgentError
from .trace import show_message

__all__ = ["run_interactive"]

HELP = "[n]ext call  [c]ontinue row  [s]kip row  [j N] jump to row N  [q]uit"


class _Stop(Exception):
    """Leave the current row: ``jump`` is the 1-based row to go to next, None to quit."""

    def __init__(self, jump: int | None) -> None:
        super().__init__("stopped by the user")
        self.jump = jump


class _Stepper(TrainerClient):
    """A trainer client that asks before each chat request and shows each answer."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        ask: Callable[[str], Any],
        console: Console,
        **kwargs: Any,
    ):
        super().__init__(transport, **kwargs)
        self.ask = ask
        self.console = console
        self.shown = 0
        self.running = False  # 'c': no more questions in this row
        self.stop: _Stop | None = None

    async def chat(
        self, server_url: str, body: Mapping[str, JSON], *, api_key: str | None
    ) -> Completion:
        messages = body.get("messages")
        assert isinstance(messages, list)
        for message in messages[self.shown :]:
            if isinstance(message, dict):
                show_message(message, self.console)
        turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        self.console.print(Text(f"── LLM call {turn + 1}: {len(messages)} messages", style="dim"))
        while not self.running:
            answer = (await self.ask("> ")).strip()
            if answer in ("", "n"):
                break
            if answer == "c":
                self.running = True
            elif answer == "s":
                self.stop = _Stop(jump=-1)
                raise AgentError("skipped in interactive mode")
            elif answer == "q":
                self.stop = _Stop(jump=None)
                raise AgentError("stopped in interactive mode")
            elif answer.startswith("j") and answer[1:].strip().isdigit():
                self.stop = _Stop(jump=int(answer[1:].strip()))
                raise AgentError("left for another row in interactive mode")
            else:
                self.console.print(Text(HELP))
        completion = await super().chat(server_url, body, api_key=api_key)
        show_message(codec.unstructure_message(completion.message), self.console)
        self.shown = len(messages) + 1
        return completion


async def run_interactive(
    agent: Agent,
    problems: Sequence[Problem],
    endpoint: _local.Endpoint,
    *,
    start_row: int,
    completion_params: dict[str, Any],
    max_turns: int,
    max_tokens_total: int,
    rollout_timeout: float,
    console: Console,
    ask: Callable[[str], Any],
) -> list[_local.RowResult]:
    """Run rows one at a time from ``start_row`` (1-based), asking before each LLM call."""
    results: list[_local.RowResult] = []
    tally = Tally()
    row = start_row
    async with ClientTransport() as transport:
        while 1 <= row <= len(problems):
            problem = problems[row - 1]
            console.rule(Text(f"row {row} of {len(problems)}: {problem.id}"))
            console.print(Text(HELP))
            stepper = _Stepper(
                transport, **_local.client_options(endpoint), ask=ask, console=console
            )
            request = _local.init_request(
                problem, endpoint, completion_params, max_turns, max_tokens_total
            )
            rollout = await run_rollout(request, agent, stepper, RunControl(tally, rollout_timeout))
            result = _local.RowResult.of(rollout)
            results.append(result)
            console.print(
                Text(
                    f"{result.status} ({result.finish_reason}) reward={result.reward}", style="bold"
                )
            )
            if stepper.stop is not None and stepper.stop.jump is None:
                break
            jump = stepper.stop.jump if stepper.stop is not None else -1
            row = jump if jump is not None and jump > 0 else row + 1
            await trio.lowlevel.checkpoint()
    return results

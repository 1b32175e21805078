"""Running cases against a server: the :class:`Runner` plays one case at a time.

Trio owns the I/O: the scripted trainer and the HTTP client live in one nursery
(:func:`open_runner`). Hypothesis is synchronous, so each rule's search
(:mod:`conformance.search`) runs in a worker thread and every example hops back onto the
Trio loop with ``trio.from_thread.run`` to run its case.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import httpx
import trio

from .case import Case, InvalidInit, Turn
from .exchange import Exchange, InitAnswer, InvalidExchange
from .rules import Rule
from .strategies import SERVER_URL
from .trainer import ScriptedTrainer, serve_trainer

__all__ = [
    "GRACE",
    "Outcome",
    "RunSettings",
    "Runner",
    "Started",
    "TargetError",
    "open_runner",
]


@attrs.frozen
class RunSettings:
    """How hard to look. Times in seconds.

    - ``examples``: Hypothesis examples per rule (before shrinking);
    - ``result_timeout``: how long a result may take after the 202, beyond the delays the
      case's own script imposes (slow answers, ``Retry-After``: :attr:`Case.scripted_delay`);
    - ``settle``: for the rules about results (:attr:`Rule.settles`), how long to keep
      listening after the first result (or the result timeout) for a second, different
      one; other rules listen ``min(settle, GRACE)`` seconds;
    - ``slow``: how long a ``slow`` trainer fault holds its chat answer back: longer than
      common client timeouts (httpx's default is 5 s);
    - ``shrink_budget``: once a rule failed, how long to search for a smaller case (0:
      none, the first failure found is reported);
    - ``seed``: Hypothesis seed (None: random).
    """

    examples: int = 25
    result_timeout: float = 60.0
    settle: float = 3.0
    slow: float = 6.0
    shrink_budget: float = 60.0
    seed: int | None = None


#: Seconds the rules not about results keep listening after the result (late callbacks).
GRACE = 0.3


@attrs.frozen
class Outcome:
    """A rule's verdict: "pass", "fail", or "error" (the run itself broke).

    For a failure, ``exchange`` is the smallest failing example found (its ``case`` is the
    replayable input) and ``violations`` what it broke; ``examples`` counts cases run.
    """

    rule: Rule
    verdict: Literal["pass", "fail", "error"]
    examples: int
    violations: tuple[str, ...] = ()
    exchange: Exchange | InvalidExchange | None = None
    note: str = ""


class TargetError(RuntimeError):
    """The server under test cannot be checked at all (unreachable, or refuses a plain
    init); the message says which and why."""


class _RuleFailed(AssertionError):
    pass


@attrs.define(eq=False)
class Started:
    """A case whose init was sent: where its callbacks go, and the init answers so far."""

    case: Case
    server_url: str
    prefix: str
    inits: list[InitAnswer] = attrs.field(factory=list)


@attrs.define(eq=False)
class Runner:
    """Runs cases against ``target`` with ``trainer`` answering at ``trainer_url``.

    ``server_api_key`` is the *target's* inbound key, sent on init as a Bearer token
    (never recorded in the wire log).
    """

    target: str
    trainer: ScriptedTrainer
    trainer_url: str
    client: httpx.AsyncClient
    settings: RunSettings
    server_api_key: str | None = attrs.field(default=None, repr=False)
    _token: str = attrs.field(factory=lambda: secrets.token_hex(4))
    _count: int = 0

    def fresh(self, case: Case) -> Case:
        """``case`` with a rollout id (and idempotency key, if it has one) never used."""
        self._count += 1
        rollout_id = f"conf-{self._token}-{self._count}"
        key = None if case.idempotency_key is None else f"{rollout_id}-key"
        return attrs.evolve(case, rollout_id=rollout_id, idempotency_key=key)

    async def _post_init(self, content: bytes, content_type: str) -> InitAnswer:
        headers = {"content-type": content_type}
        if self.server_api_key is not None:
            headers["authorization"] = f"Bearer {self.server_api_key}"
        url = f"{self.target}/v1/rollout/init"
        for _ in range(
            20
        ):  # a 429 asks a trainer to come back later: we do, a bounded number of times
            response = await self.client.post(url, content=content, headers=headers)
            if response.status_code != 429:
                break
            await trio.sleep(min(float(response.headers.get("retry-after", "1") or 1), 5.0))
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return InitAnswer("first", response.status_code, body)

    def settle_for(self, rule: Rule) -> float:
        """How long ``rule``'s cases keep listening after the result."""
        return self.settings.settle if rule.settles else min(self.settings.settle, GRACE)

    async def run_case(self, case: Case, *, settle: float | None = None) -> Exchange:
        """Init ``case`` (a fresh copy), wait for its result, return what was seen."""
        started = await self.start_case(case)
        if started.case.duplicate_init:
            await self.send_again(started, "duplicate")
        if started.case.changed_init:
            await self.send_again(started, "changed")
        return await self.finish_case(started, settle=settle)

    async def start_case(self, case: Case, *, copies: int = 1) -> Started:
        """Script a fresh copy of ``case`` and send its init ``copies`` times at once (a
        race of identical inits); does not wait for a result. The first answer to arrive
        is recorded as "first", the others as "duplicate"."""
        case = self.fresh(case)
        prefix = self.trainer.register(case)
        started = Started(case, self.trainer_url + prefix, prefix)
        body = json.dumps(case.init_body(started.server_url)).encode()

        async def send() -> None:
            answer = await self._post_init(body, "application/json")
            started.inits.append(
                answer if not started.inits else attrs.evolve(answer, sent="duplicate")
            )

        if copies == 1:
            await send()
            return started
        async with trio.open_nursery() as nursery:
            for _ in range(copies):
                nursery.start_soon(send)
        return started

    async def send_again(self, started: Started, sent: Literal["duplicate", "changed"]) -> None:
        """Send the identical init again, or (``changed``) another body, same key."""
        case = started.case
        body = case.init_body(started.server_url)
        if sent == "changed":
            body = case.changed_body(started.server_url)
        answer = await self._post_init(json.dumps(body).encode(), "application/json")
        started.inits.append(attrs.evolve(answer, sent=sent))

    async def finish_all(
        self, started: Sequence[Started], *, settle: float | None = None
    ) -> list[Exchange]:
        """:meth:`finish_case` for each, concurrently; in the same order."""
        exchanges: list[Exchange | None] = [None] * len(started)

        async def finish(index: int) -> None:
            exchanges[index] = await self.finish_case(started[index], settle=settle)

        async with trio.open_nursery() as nursery:
            for index in range(len(started)):
                nursery.start_soon(finish, index)
        return [exchange for exchange in exchanges if exchange is not None]

    async def finish_case(self, started: Started, *, settle: float | None = None) -> Exchange:
        """Wait for the result of an accepted case (bounded by the result timeout plus
        the script's own delays), keep listening ``settle`` seconds more (default: the
        settings' ``settle``), and return the :class:`Exchange`."""
        acknowledged = False
        timeout = self.settings.result_timeout + started.case.scripted_delay
        if started.inits[0].status == 202:
            acknowledged = await self.trainer.wait_acknowledged(started.prefix, timeout)
        await trio.sleep(self.settings.settle if settle is None else settle)
        return Exchange(
            case=started.case,
            server_url=started.server_url,
            inits=tuple(started.inits),
            wire=tuple(self.trainer.wire(started.prefix)),
            acknowledged=acknowledged,
            result_timeout=timeout,
        )

    async def run_invalid(self, invalid: InvalidInit) -> InvalidExchange:
        """Send an invalid init; return its answer and any callbacks it caused."""
        self._count += 1
        rollout_id = f"conf-{self._token}-{self._count}"
        placeholder = Case(rollout_id=rollout_id, messages=(), turns=(Turn(content="x"),))
        prefix = self.trainer.register(placeholder)
        server_url = self.trainer_url + prefix
        text = invalid.body.replace(SERVER_URL, server_url).replace(
            '"rollout_id": ""', json.dumps({"rollout_id": rollout_id})[1:-1]
        )
        invalid = attrs.evolve(invalid, rollout_id=rollout_id, body=text)
        answer = await self._post_init(text.encode(), invalid.content_type)
        await trio.sleep(min(self.settings.settle, GRACE))
        return InvalidExchange(
            invalid, server_url, answer.status, answer.body, tuple(self.trainer.wire(prefix))
        )

    async def probe_tools(self) -> list[dict[str, Any]]:
        """The tools the server advertises, from the 202 of a one-turn rollout.

        Raises :class:`TargetError` when the server is unreachable or does not answer an
        init with 202.
        """
        try:
            exchange = await self.run_case(
                Case(rollout_id="", messages=({"role": "user", "content": "Say hello."},)),
                settle=min(self.settings.settle, GRACE),
            )
        except httpx.HTTPError as exc:
            raise TargetError(f"cannot reach {self.target}: {exc}") from None
        first = exchange.inits[0]
        if first.status != 202 or not isinstance(first.body, dict):
            raise TargetError(
                f"{self.target} answered a plain init with {first.status}: {str(first.body)[:300]}"
            )
        tools = first.body.get("tools")
        return [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []


@asynccontextmanager
async def open_runner(
    target: str,
    settings: RunSettings,
    *,
    trainer_host: str = "127.0.0.1",
    trainer_port: int = 0,
    trainer_url: str | None = None,
    server_api_key: str | None = None,
) -> AsyncIterator[Runner]:
    """Serve the scripted trainer and open the client; the runner is usable inside.

    ``trainer_url`` is the trainer's base URL as the server under test reaches it
    (default ``http://{trainer_host}:{port}``; set it when the server runs elsewhere).
    """
    trainer = ScriptedTrainer()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_trainer, trainer, trainer_host, trainer_port)
        base = (trainer_url or f"http://{trainer_host}:{port}").rstrip("/")
        timeout = httpx.Timeout(30.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            yield Runner(target.rstrip("/"), trainer, base, client, settings, server_api_key)
        nursery.cancel_scope.cancel()

"""The agent API: what an agent is, and the context its loop runs in.

An :class:`Agent` is a name, a list of :class:`~rollout.tools.Tool`, a loop and a reward
function. The loop is an ``async def loop(ctx: RolloutContext) -> None``; the default,
:func:`tool_loop`, is the standard tool-calling loop::

    while True:
        message = await ctx.chat()          # one LLM turn on the trainer
        if not message.tool_calls:
            return                          # the model answered: finish_reason "stop"
        await ctx.call_tools(message)       # run the calls concurrently, append in call order

:class:`RolloutContext` is the only way agent code touches a rollout, and it keeps the
protocol rules by construction:

- the history is append-only (docs/PROTOCOL.md §7.1): :attr:`RolloutContext.messages` is
  a tuple of frozen messages; assistant messages come only from :meth:`~RolloutContext.chat`;
- every tool call is answered exactly once, right after its assistant message, before the
  next chat request (§3 rule 2): :meth:`~RolloutContext.chat` refuses to run otherwise;
- budgets (§3 rule 4): when ``max_turns`` chat requests were made, or the summed
  ``usage.completion_tokens`` reached ``max_tokens_total``, the next :meth:`chat` cancels the
  rollout's budget scope. The agent's code stops right there (``trio.Cancelled`` is not an
  ``Exception``, so it cannot be swallowed by accident) and the rollout ends ``COMPLETED``
  with ``finish_reason`` "max_turns" or "max_tokens".
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from . import _json, _threads
from ._json import JSON
from ._trace import NO_TRACE, Trace
from ._trainer.chat import Completion, chat_request
from ._wire import codec
from ._wire.models import CompletionParams, FinishReason, Message, Metrics
from .errors import AgentError
from .tools import Tool, run_tool_call

__all__ = ["Agent", "AgentLoop", "RewardFn", "RolloutContext", "Trajectory", "tool_loop"]

#: Sends one chat request body to the trainer and returns the parsed completion.
ChatSender = Callable[[dict[str, JSON]], Awaitable[Completion]]


@attrs.frozen
class Trajectory:
    """What a reward function sees: the final messages, the init ``metadata`` (e.g.
    ``ground_truth``) and why the loop ended."""

    rollout_id: str
    messages: tuple[Message, ...]
    metadata: Mapping[str, Any]
    finish_reason: FinishReason

    @property
    def final_answer(self) -> str:
        """Text of the last assistant message, ``""`` when there is none."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return message.text
        return ""


#: ``reward(trajectory) -> float | None``, sync or async. ``None`` means "no reward".
RewardFn = Callable[[Trajectory], float | Awaitable[float | None] | None]
#: ``async def loop(ctx) -> None``: drives one rollout through :class:`RolloutContext`.
AgentLoop = Callable[["RolloutContext"], Awaitable[None]]


async def tool_loop(ctx: RolloutContext) -> None:
    """The standard tool-calling loop: chat, run the tool calls, repeat until the model
    answers without tool calls. Budgets and the deadline end it from outside."""
    while True:
        message = await ctx.chat()
        if not message.tool_calls:
            return
        await ctx.call_tools(message)


def _tools_by_name(tools: Iterable[Tool]) -> tuple[Tool, ...]:
    tools = tuple(tools)
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique, repeated: {', '.join(duplicates)}")
    return tools


@attrs.frozen
class Agent:
    """An agent: ``name`` (reported by ``GET /health`` as ``agent_loop``), its ``tools``,
    its ``loop`` (default :func:`tool_loop`) and an optional ``reward`` function.

    A sync ``reward`` runs in a worker thread; cancelled by the rollout's deadline, that
    thread is abandoned (it runs on until the function returns), counted in ``/health`` as
    ``abandoned_threads`` and logged, as for sync tools (see :func:`~rollout.tool`).

    Raises :class:`ValueError` when two tools share a name.
    """

    name: str
    tools: tuple[Tool, ...] = attrs.field(default=(), converter=_tools_by_name)
    reward: RewardFn | None = None
    loop: AgentLoop = tool_loop
    #: The OpenAI tool schemas sent in the ``202`` body and with every chat request.
    tool_schemas: tuple[Mapping[str, Any], ...] = attrs.field(init=False, repr=False)

    @tool_schemas.default
    def _schemas(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(t.schema for t in self.tools)

    async def score(self, trajectory: Trajectory) -> float | None:
        """Run the reward function (sync ones in a worker thread); ``None`` without one.

        Raises whatever the reward function raises, and :class:`TypeError` when it returns
        something that is not a real number or ``None``.
        """
        if self.reward is None:
            return None
        if inspect.iscoroutinefunction(self.reward):
            value = await self.reward(trajectory)
        else:
            value = await _threads.run_sync(
                partial(self.reward, trajectory), limiter=None, what="the reward function"
            )
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"reward function returned {value!r}, expected a float or None")
        return float(value)


@attrs.define
class _Counters:
    """Running metrics of one rollout; latencies in seconds until :meth:`metrics`."""

    llm_seconds: float = 0.0
    tool_seconds: float = 0.0
    llm_calls: int = 0
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_context_tokens: int = 0

    def metrics(self, total_seconds: float) -> Metrics:
        return Metrics(
            total_latency_ms=total_seconds * 1000,
            llm_latency_ms=self.llm_seconds * 1000,
            tool_latency_ms=self.tool_seconds * 1000,
            num_llm_calls=self.llm_calls,
            num_tool_calls=self.tool_calls,
            prompt_tokens=self.prompt_tokens,
            response_tokens=self.completion_tokens,
            max_context_tokens=self.max_context_tokens,
        )


class RolloutContext:
    """One rollout as its agent loop sees it. Created by the server, not by agent code.

    Read-only views: :attr:`rollout_id`, :attr:`messages`, :attr:`metadata`, :attr:`turns`,
    :attr:`completion_tokens`, :attr:`max_turns`, :attr:`max_tokens_total`, :attr:`tools`.
    """

    def __init__(
        self,
        *,
        rollout_id: str,
        messages: Sequence[Message],
        metadata: Mapping[str, Any],
        params: CompletionParams,
        max_turns: int,
        max_tokens_total: int,
        agent: Agent,
        send_chat: ChatSender,
        tool_limiter: trio.CapacityLimiter | None = None,
        trace: Trace = NO_TRACE,
    ) -> None:
        self.rollout_id = rollout_id
        self.metadata = metadata
        self.max_turns = max_turns
        self.max_tokens_total = max_tokens_total
        self._messages: list[Message] = list(messages)
        # The history as wire JSON, converted once per message (it is append-only).
        self._wire: list[dict[str, JSON]] = [codec.unstructure_message(m) for m in messages]
        self._params = params
        self._agent = agent
        self._tools = {t.name: t for t in agent.tools}
        self._send_chat = send_chat
        self._tool_limiter = tool_limiter
        self._trace = trace
        self._unanswered: dict[str, None] = {}  # tool_call ids of the last assistant message
        self._last_finish_reason: str | None = None
        self._counters = _Counters()
        #: The scope budgets cancel; :meth:`_run` opens it around the agent loop.
        self._budget_scope = trio.CancelScope()
        #: Which budget ended the loop, set just before :attr:`_budget_scope` is cancelled.
        self._budget_exhausted: FinishReason | None = None

    # ------------------------------------------------------------------ views

    @property
    def messages(self) -> tuple[Message, ...]:
        """The whole history so far, init messages first. A new tuple: appending to the
        rollout goes through :meth:`chat`, :meth:`call_tools` or :meth:`append`."""
        return tuple(self._messages)

    @property
    def tools(self) -> tuple[Tool, ...]:
        return self._agent.tools

    @property
    def turns(self) -> int:
        """Chat requests answered so far."""
        return self._counters.llm_calls

    @property
    def prompt_tokens(self) -> int:
        """Sum of ``usage.prompt_tokens`` so far."""
        return self._counters.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Sum of ``usage.completion_tokens`` so far, the quantity ``max_tokens_total`` bounds."""
        return self._counters.completion_tokens

    @property
    def finish_reason(self) -> FinishReason:
        """The ``finish_reason`` of a loop that returned by itself: "length" when the last
        completion was cut by ``max_tokens``, else "stop"."""
        return FinishReason.LENGTH if self._last_finish_reason == "length" else FinishReason.STOP

    # ------------------------------------------------------------------ actions

    async def chat(self) -> Message:
        """One LLM turn: send the full history to the trainer, append and return the
        assistant message.

        Raises :class:`~rollout.errors.AgentError` when tool calls of the previous assistant
        message are unanswered (docs/PROTOCOL.md §7.2), and
        :class:`~rollout.errors.TrainerError` when the trainer fails after its retries.
        When a budget is spent it ends the agent loop (from outside it) instead of sending
        (docs/PROTOCOL.md §7.4).
        """
        if self._unanswered:
            raise AgentError(
                f"tool calls {', '.join(self._unanswered)} must be answered before the next chat"
                " request (docs/PROTOCOL.md §7.2)"
            )
        if self.turns >= self.max_turns:
            await self._exhausted(FinishReason.MAX_TURNS)
        if self.completion_tokens >= self.max_tokens_total:
            await self._exhausted(FinishReason.MAX_TOKENS)
        body = chat_request(
            self.rollout_id, list(self._wire), self._params, self._agent.tool_schemas
        )
        self._trace.event("pre_llm", turn=self.turns + 1, messages=len(self._wire))
        started = trio.current_time()
        try:
            completion = await self._send_chat(body)
        finally:
            self._counters.llm_seconds += trio.current_time() - started
        usage = completion.usage
        self._counters.llm_calls += 1
        self._counters.prompt_tokens += usage.prompt_tokens
        self._counters.completion_tokens += usage.completion_tokens
        self._counters.max_context_tokens = max(
            self._counters.max_context_tokens,
            usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        )
        self._last_finish_reason = completion.finish_reason
        message = completion.message
        self._messages.append(message)
        self._wire.append(codec.unstructure_message(message))
        if self._trace.enabled:
            self._trace.event(
                "llm_response",
                turn=self.turns,
                message=self._wire[-1],
                finish_reason=completion.finish_reason,
                usage=attrs.asdict(usage),
                seconds=round(trio.current_time() - started, 6),
            )
        self._unanswered = dict.fromkeys(call.id for call in message.tool_calls or ())
        return message

    async def call_tools(self, message: Message | None = None) -> tuple[Message, ...]:
        """Run the tool calls of ``message`` (default: the last message) concurrently and
        append one tool message per call, in call order. Returns those tool messages.

        Failed calls are answered with an error text (docs/PROTOCOL.md §7.2); this never
        raises because of a tool. Raises :class:`~rollout.errors.AgentError` when
        ``message`` is not the last message of the history.
        """
        message = message if message is not None else self._messages[-1]
        if not self._messages or message is not self._messages[-1]:
            raise AgentError("call_tools() takes the last assistant message of the history")
        calls = message.tool_calls or ()
        contents: list[str] = [""] * len(calls)

        async def run(index: int) -> None:
            contents[index] = await run_tool_call(
                calls[index], self._tools, limiter=self._tool_limiter
            )

        started = trio.current_time()
        try:
            if len(calls) == 1:  # the usual case, in this task: no nursery and task to hold
                await run(0)
            else:
                async with trio.open_nursery() as nursery:
                    for index in range(len(calls)):
                        nursery.start_soon(run, index)
        finally:
            self._counters.tool_seconds += trio.current_time() - started
        replies = tuple(
            Message.tool(call.id, _json.clean_text(content))
            for call, content in zip(calls, contents, strict=True)
        )
        for reply in replies:
            self.append(reply)
        if self._trace.enabled:
            self._trace.event(
                "tool_results",
                turn=self.turns,
                results=[{"tool_call_id": r.tool_call_id, "content": r.content} for r in replies],
                seconds=round(trio.current_time() - started, 6),
            )
        return replies

    def log_event(self, name: str, **data: Any) -> None:
        """Add event ``name`` with ``data`` to this rollout's trace (``rollout serve --log
        DIR``); free when tracing is off, and it never raises or waits."""
        self._trace.event(name, turn=self.turns, **data)

    def append(self, message: Message) -> None:
        """Append a ``user``/``system``/``tool`` message (e.g. environment feedback).

        Raises :class:`~rollout.errors.AgentError` for an ``assistant`` message (those come
        from the model, via :meth:`chat`), for a tool message whose ``tool_call_id`` is not
        an unanswered call of the last assistant message, for any other message while
        tool calls are unanswered, and for a message that strict JSON cannot carry (NaN,
        a lone surrogate: it could never be sent to the trainer, docs/PROTOCOL.md §2.5).
        """
        wire = codec.unstructure_message(message)
        try:
            _json.check(wire)
        except _json.JSONError as exc:
            raise AgentError(f"the message cannot be sent as JSON: {exc}") from None
        if message.role == "assistant":
            raise AgentError("assistant messages come from the trainer: use ctx.chat()")
        if message.role == "tool":
            if message.tool_call_id not in self._unanswered:
                raise AgentError(
                    f"tool message for {message.tool_call_id!r} answers no unanswered tool call"
                )
            del self._unanswered[message.tool_call_id]
            self._counters.tool_calls += 1
        elif self._unanswered:
            raise AgentError("tool messages must directly follow their assistant message")
        self._messages.append(message)
        self._wire.append(wire)

    # ------------------------------------------------------------------ for the runner

    async def _run(self) -> FinishReason:
        """Run the agent's loop inside the budget scope; returns why it ended (a budget,
        or the model's own finish reason). Called once, by the server's lifecycle."""
        with self._budget_scope:
            await self._agent.loop(self)
        return self._budget_exhausted or self.finish_reason

    def _metrics(self, total_seconds: float) -> Metrics:
        """The result's metrics, the whole rollout having taken ``total_seconds``."""
        return self._counters.metrics(total_seconds)

    async def _exhausted(self, reason: FinishReason) -> Any:
        self._budget_exhausted = reason
        self._budget_scope.cancel()
        await trio.lowlevel.checkpoint()  # raises Cancelled: the agent stops here
        raise AssertionError("unreachable: the budget scope was cancelled")  # pragma: no cover

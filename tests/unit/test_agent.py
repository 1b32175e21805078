"""RolloutContext: the append-only history, tool call bookkeeping, budgets and concurrent
tool calls. The chat sender is an in-test fake: the wire is covered by tests/e2e."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from rollout import (
    Agent,
    AgentError,
    Completion,
    CompletionParams,
    FinishReason,
    Message,
    RolloutContext,
    ToolCall,
    Usage,
    tool,
)
from rollout._json import JSON
from rollout.agent import ChatSender, tool_loop


@attrs.define
class ScriptedChat:
    """Answers chat requests from a list of assistant messages; records every body."""

    answers: list[Message]
    completion_tokens: int = 10
    bodies: list[dict[str, JSON]] = attrs.field(factory=list)

    async def __call__(self, body: dict[str, JSON]) -> Completion:
        self.bodies.append(body)
        message = self.answers.pop(0) if self.answers else Message("assistant", "done")
        usage = Usage(
            prompt_tokens=5,
            completion_tokens=self.completion_tokens,
            total_tokens=5 + self.completion_tokens,
        )
        return Completion(message, "tool_calls" if message.tool_calls else "stop", usage)


def calls(*names_and_args: tuple[str, dict[str, Any]], prefix: str = "c") -> Message:
    return Message(
        "assistant",
        None,
        tool_calls=tuple(
            ToolCall(id=f"{prefix}{i}", name=name, arguments=json.dumps(args))
            for i, (name, args) in enumerate(names_and_args)
        ),
    )


@tool
async def sleep_then_echo(seconds: float, text: str) -> str:
    """Sleep, then return the text."""
    await trio.sleep(seconds)
    return text


def make_context(
    chat: ChatSender,
    *,
    tools: Sequence[Any] = (sleep_then_echo,),
    max_turns: int = 10,
    max_tokens_total: int = 1000,
) -> RolloutContext:
    return RolloutContext(
        rollout_id="r-1",
        messages=[Message.system("sys"), Message.user("question")],
        metadata={},
        params=CompletionParams(),
        max_turns=max_turns,
        max_tokens_total=max_tokens_total,
        agent=Agent("test", tools=tuple(tools)),
        send_chat=chat,
    )


async def run_loop(ctx: RolloutContext) -> None:
    with ctx._budget_scope:
        await tool_loop(ctx)


async def test_each_chat_request_extends_the_previous_one() -> None:
    chat = ScriptedChat([calls(("sleep_then_echo", {"seconds": 0, "text": "a"}))])
    ctx = make_context(chat)
    await run_loop(ctx)

    first, second = (body["messages"] for body in chat.bodies)
    assert isinstance(first, list)
    assert isinstance(second, list)
    assert second[: len(first)] == first
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[3] == {"role": "tool", "content": "a", "tool_call_id": "c0"}
    assert [m.role for m in ctx.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ctx._budget_exhausted is None
    assert ctx.finish_reason is FinishReason.STOP


async def test_earlier_messages_cannot_be_rewritten() -> None:
    ctx = make_context(ScriptedChat([]))
    history = ctx.messages

    with pytest.raises(AttributeError):
        history[0].content = "rewritten"  # type: ignore[misc]
    with pytest.raises(TypeError):
        history[0] = Message.user("x")  # type: ignore[index]
    assert ctx.messages == history  # a copy: the history itself never changed


async def test_assistant_messages_only_come_from_the_trainer() -> None:
    ctx = make_context(ScriptedChat([]))
    with pytest.raises(AgentError, match=r"ctx\.chat"):
        ctx.append(Message("assistant", "I made this up"))


async def test_the_next_chat_waits_for_every_tool_call_to_be_answered() -> None:
    chat = ScriptedChat(
        [
            calls(
                ("sleep_then_echo", {"seconds": 0, "text": "a"}),
                ("sleep_then_echo", {"seconds": 0, "text": "b"}),
            )
        ]
    )
    ctx = make_context(chat)
    await ctx.chat()

    with pytest.raises(AgentError, match="c0, c1"):
        await ctx.chat()
    with pytest.raises(AgentError, match="directly follow"):
        ctx.append(Message.user("interjection"))
    with pytest.raises(AgentError, match="answers no unanswered"):
        ctx.append(Message.tool("c9", "?"))
    ctx.append(Message.tool("c1", "b"))
    with pytest.raises(AgentError, match="answers no unanswered"):
        ctx.append(Message.tool("c1", "twice"))
    ctx.append(Message.tool("c0", "a"))
    await ctx.chat()
    assert len(chat.bodies) == 2


async def test_tool_calls_run_concurrently_and_are_appended_in_call_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = ScriptedChat(
        [
            calls(
                ("sleep_then_echo", {"seconds": 3, "text": "slow"}),
                ("sleep_then_echo", {"seconds": 1, "text": "fast"}),
                ("sleep_then_echo", {"seconds": 2, "text": "middle"}),
            )
        ]
    )
    ctx = make_context(chat)
    await ctx.chat()
    started = trio.current_time()
    replies = await ctx.call_tools()

    assert trio.current_time() - started == pytest.approx(3)  # not 6: concurrently
    assert [(r.tool_call_id, r.content) for r in replies] == [
        ("c0", "slow"),
        ("c1", "fast"),
        ("c2", "middle"),
    ]
    assert ctx.messages[-3:] == replies
    assert ctx._counters.tool_calls == 3


async def test_a_failing_tool_call_is_answered_with_an_error_text() -> None:
    chat = ScriptedChat([calls(("nope", {}), ("sleep_then_echo", {"seconds": "x"}))])
    ctx = make_context(chat)
    await run_loop(ctx)

    tool_messages = [m for m in ctx.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_messages] == ["c0", "c1"]
    assert all(m.text.startswith("Error: ") for m in tool_messages)


async def test_max_turns_stops_before_the_next_chat_request() -> None:
    forever = [
        calls(("sleep_then_echo", {"seconds": 0, "text": "x"}), prefix=f"t{i}-") for i in range(10)
    ]
    chat = ScriptedChat(forever)
    ctx = make_context(chat, max_turns=3)
    await run_loop(ctx)

    assert len(chat.bodies) == 3
    assert ctx._budget_exhausted is FinishReason.MAX_TURNS
    assert ctx._budget_scope.cancelled_caught
    assert ctx.messages[-1].role == "tool"  # the last turn's calls were answered


async def test_max_tokens_total_stops_once_the_sum_is_reached() -> None:
    forever = [
        calls(("sleep_then_echo", {"seconds": 0, "text": "x"}), prefix=f"t{i}-") for i in range(10)
    ]
    chat = ScriptedChat(forever, completion_tokens=40)
    ctx = make_context(chat, max_tokens_total=100)
    await run_loop(ctx)

    assert len(chat.bodies) == 3  # 40, 80, 120: the fourth request is never sent
    assert ctx.completion_tokens == 120
    assert ctx._budget_exhausted is FinishReason.MAX_TOKENS


async def test_a_truncated_completion_finishes_with_length() -> None:
    async def cut(body: dict[str, JSON]) -> Completion:
        return Completion(Message("assistant", "partial"), "length", Usage(1, 1, 2))

    ctx = make_context(cut)
    await run_loop(ctx)
    assert ctx.finish_reason is FinishReason.LENGTH


def test_tool_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="sleep_then_echo"):
        Agent("dup", tools=(sleep_then_echo, sleep_then_echo))


async def test_the_reward_function_is_checked() -> None:
    from rollout import Trajectory

    trajectory = Trajectory("r", (Message.user("q"),), {}, FinishReason.STOP)
    assert await Agent("a", reward=lambda t: 1).score(trajectory) == 1.0
    assert await Agent("a").score(trajectory) is None

    async def async_reward(t: Trajectory) -> float:
        return 0.5

    assert await Agent("a", reward=async_reward).score(trajectory) == 0.5
    with pytest.raises(TypeError, match="expected a float"):
        await Agent("a", reward=lambda t: "1.0").score(trajectory)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="expected a float"):
        await Agent("a", reward=lambda t: True).score(trajectory)

"""The README's agent example runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rollout import Agent, FinishReason, Message, ToolCall, Trajectory
from rollout.tools import run_tool_call

README = Path(__file__).parents[2] / "README.md"


def _example() -> dict[str, Any]:
    (code,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


async def test_the_readme_agent_works() -> None:
    example = _example()
    agent: Agent = example["agent"]
    tools = {t.name: t for t in agent.tools}

    function = agent.tool_schemas[0]["function"]
    assert function["name"] == "lookup"
    assert function["parameters"]["required"] == ["city"]
    found = await run_tool_call(ToolCall("c1", "lookup", '{"city": "Paris"}'), tools)
    missing = await run_tool_call(ToolCall("c2", "lookup", '{"city": "Atlantis"}'), tools)
    assert found == "18 celsius"
    assert missing == "Error: unknown city 'Atlantis'"
    trajectory = Trajectory(
        "r", (Message("assistant", "It is 18 celsius."),), {"ground_truth": "18"}, FinishReason.STOP
    )
    assert await agent.score(trajectory) == 1.0

"""An agent loop written for the reference SDK serves unchanged: its own message list,
ctx.chat / ctx.complete / ctx.error / ctx.record_tool_call / ctx.log_event, its own tool
execution; the server still keeps the history append-only."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import rollout_cli

#: A loop in the reference's own style (its README's calculator example), no rollout import.
REFERENCE_LOOP = """
import json
import time


class CalculatorLoop:
    name = "reference_calculator"

    def get_tools(self, request):
        return [{
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two numbers",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
            },
        }]

    async def run(self, ctx):
        messages = list(ctx.request.messages)
        if ctx.request.metadata.get("rewrite"):
            messages[0] = {"role": "user", "content": "something else"}
        for _ in range(ctx.request.max_turns):
            result = await ctx.chat(messages, **ctx.request.completion_params)
            messages.append(result.message)
            ctx.log_event("llm_turn", has_tool_calls=result.has_tool_calls)
            if not result.has_tool_calls:
                break
            for call in result.tool_calls:
                started = time.monotonic()
                args = json.loads(call["function"]["arguments"])
                total = str(args["a"] + args["b"])
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": total})
                ctx.record_tool_call(latency_ms=(time.monotonic() - started) * 1000)
        if ctx.request.metadata.get("give_up"):
            return ctx.error("the loop gave up", messages)
        answer = messages[-1].get("content") or ""
        expected = str(ctx.request.metadata.get("ground_truth"))
        return ctx.complete(messages, reward=float(expected in answer))


agent_loop = CalculatorLoop()
"""

ROWS = [
    {"id": "ok", "user_prompt": "What is 2 + 3?", "ground_truth": "5"},
    {"id": "gives-up", "user_prompt": "What is 1 + 1?", "ground_truth": "2", "give_up": True},
    {"id": "rewrites", "user_prompt": "What is 4 + 4?", "ground_truth": "8", "rewrite": True},
]


async def test_a_reference_loop_validates_and_runs_unchanged(tmp_path: Path) -> None:
    (tmp_path / "refloop.py").write_text(REFERENCE_LOOP)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    status, out, err = await rollout_cli(tmp_path, "validate", "-m", "refloop:agent_loop")
    assert status == 0, err
    assert "agent 'reference_calculator' is valid (tools: add)" in out

    status, out, err = await rollout_cli(
        tmp_path, "test", "-m", "refloop:agent_loop", "-d", "rows.jsonl", "-o", "out.json"
    )
    assert status == 1  # two rows end in ERROR, on purpose
    rows = {r["id"]: r for r in json.loads((tmp_path / "out.json").read_text())}

    ok = rows["ok"]
    assert (ok["status"], ok["reward"], ok["turns"]) == ("COMPLETED", 1.0, 2)
    assert [m["role"] for m in ok["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert ok["messages"][2]["content"] == "5"

    gave_up = rows["gives-up"]
    assert (gave_up["status"], gave_up["error"]) == ("ERROR", "agent error: the loop gave up")
    assert len(gave_up["messages"]) == 4  # the trajectory so far is kept

    rewrote = rows["rewrites"]
    assert rewrote["status"] == "ERROR"
    assert "messages are append-only" in rewrote["error"]

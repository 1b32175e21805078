"""``rollout test``: the README's agent over a dataset in the reference's format, against the
built-in simulator (offline) and against a local OpenAI-compatible server (the simulator in
its OpenAI-compatible mode: a model required, trainer-only fields refused, no token ids, a
429 with Retry-After on the way), through the server's own lifecycle."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import rollout_cli
from rollout.testing import Fault, MockTrainer
from rollout.testing import serve as serve_simulator

README = Path(__file__).parents[2] / "README.md"
ROWS = [
    {
        "id": "w-1",
        "system_prompt": "Use the tools.",
        "user_prompt": "Weather in Paris?",
        "ground_truth": "18",
    },
    {"id": "w-2", "user_prompt": "How cold is it in Oslo?", "ground_truth": "4"},
    {"id": "w-3", "user_prompt": "And in Atlantis?", "ground_truth": "20"},
]


def _workspace(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))


async def _rollout(cwd: Path, *args: str) -> tuple[int, str]:
    status, out, err = await rollout_cli(cwd, *args)
    return status, out + err


def _trace_files(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "traces").rglob("rollout-traced-1.jsonl"))


def _results(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


async def test_a_dataset_runs_against_the_built_in_simulator(tmp_path: Path) -> None:
    _workspace(tmp_path)
    status, output = await _rollout(
        tmp_path,
        *("test", "-m", "weather:agent", "-d", "rows.jsonl", "-o", "out.json", "--log", "traces"),
    )
    assert status == 0, output
    traces = sorted(p.name for p in (tmp_path / "traces").rglob("*.jsonl"))
    assert traces == ["rollout-w-1.jsonl", "rollout-w-2.jsonl", "rollout-w-3.jsonl"]
    rows = _results(tmp_path / "out.json")
    assert [(r["id"], r["status"], r["reward"]) for r in rows] == [
        ("w-1", "COMPLETED", 1.0),
        ("w-2", "COMPLETED", 1.0),
        ("w-3", "COMPLETED", 0.0),  # the tool said "unknown city": an honest zero
    ]
    assert rows[0]["messages"][0] == {"role": "system", "content": "Use the tools."}
    assert rows[0]["turns"] == 2
    assert rows[0]["completion_tokens"] > 0
    assert "rollout test: weather" in output


async def test_a_dataset_runs_against_an_openai_compatible_server(tmp_path: Path) -> None:
    _workspace(tmp_path)
    server = MockTrainer(openai_compatible=True)
    server.chat_faults.append(Fault(429, retry_after=1))  # a rate limit, waited out
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_simulator, server, "127.0.0.1", 0)
        status, output = await _rollout(
            tmp_path,
            *("test", "-m", "weather:agent", "-d", "rows.jsonl", "--limit", "2"),
            *("--base-url", f"http://127.0.0.1:{port}/v1", "--model", "tiny-model"),
            *("--api-key", "sk-local", "--temperature", "0.2", "--param", "seed=7"),
            *("-o", "out.json"),
        )
        nursery.cancel_scope.cancel()

    assert status == 0, output
    rows = _results(tmp_path / "out.json")
    assert [(r["status"], r["reward"]) for r in rows] == [("COMPLETED", 1.0)] * 2
    bodies = [r.body for r in server.chat_requests]
    assert len(bodies) == 5  # two turns per row, and the one answered 429
    for body in bodies:
        assert body["model"] == "tiny-model"
        assert "rollout_id" not in body
        assert "logprobs" not in body
        assert (body["temperature"], body["seed"]) == (0.2, 7)
    assert all(r.headers["authorization"] == "Bearer sk-local" for r in server.chat_requests)
    assert "sk-local" not in output


async def test_an_openai_compatible_server_without_a_model_is_a_usage_error(
    tmp_path: Path,
) -> None:
    _workspace(tmp_path)
    status, output = await _rollout(
        tmp_path, "test", "-m", "weather:agent", "-d", "rows.jsonl", "--base-url", "http://x/v1"
    )
    assert status == 2
    assert "--model is required with --base-url" in output
    assert "Traceback" not in output


async def test_eval_prints_pass_at_k_for_a_model_and_its_baseline(tmp_path: Path) -> None:
    _workspace(tmp_path)
    server = MockTrainer(openai_compatible=True)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_simulator, server, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{port}/v1"
        status, output = await _rollout(
            tmp_path,
            *("eval", "-m", "weather:agent", "-d", "rows.jsonl", "--n", "4"),
            *("--base-url", base, "--model", "candidate", "--baseline-model", "baseline"),
            *("-o", "eval.json", "--log", "traces"),
        )
        nursery.cancel_scope.cancel()

    assert status == 0, output
    for k in range(1, 5):
        assert f"pass@{k}" in output
    reports = json.loads((tmp_path / "eval.json").read_text())["reports"]
    assert [r["label"] for r in reports] == ["candidate", "baseline"]
    for scored in reports:
        assert (scored["rows"], scored["samples"], scored["errored"]) == (3, 12, 0)
        assert scored["pass_at"] == {str(k): pytest.approx(2 / 3) for k in range(1, 5)}
    for model in ("candidate", "baseline"):  # a directory per model, a trace per sample
        traces = list((tmp_path / "traces" / model).rglob("rollout-w-1_*.jsonl"))
        assert len(traces) == 4
    models = {r.body["model"] for r in server.chat_requests}
    assert models == {"candidate", "baseline"}
    assert len({r.body["messages"][-1]["content"] for r in server.chat_requests}) > 1


async def test_traces_of_a_served_rollout_and_the_trace_command(
    tmp_path: Path, start_server: Any, trainer: Any
) -> None:
    from conftest import init_body
    from rollout import Agent, RolloutContext
    from rollout.examples.calculator import agent as calculator

    async def loop(ctx: RolloutContext) -> None:
        ctx.log_event("my_event", detail="from agent code")
        await calculator.loop(ctx)

    agent = Agent("traced", tools=calculator.tools, loop=loop, reward=calculator.reward)
    server = await start_server(agent=agent, trace_dir=tmp_path / "traces", api_key="inbound-7")
    body = init_body(trainer, rollout_id="traced-1", api_key="sk-callback-7")
    headers = {"authorization": "Bearer inbound-7"}
    response = await server.init(body, headers=headers)
    assert response.status_code == 202
    await trainer.mock.wait_result("traced-1")
    with trio.fail_after(10):
        while not (files := _trace_files(tmp_path)) or "delivery" not in files[0].read_text():  # noqa: ASYNC110
            await trio.sleep(0.01)

    events = [json.loads(line) for line in files[0].read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "my_event"
    assert names[1:] == [
        "pre_llm",
        "llm_response",
        "tool_results",
        "pre_llm",
        "llm_response",
        "rollout_complete",
        "delivery",
    ]
    assert events[-2]["status"] == "COMPLETED"
    assert events[-1]["acknowledged"] is True
    assert all(e["rollout_id"] == "traced-1" and isinstance(e["ts"], float) for e in events)
    raw = files[0].read_text()
    assert "sk-callback-7" not in raw
    assert "inbound-7" not in raw

    status, output = await _rollout(tmp_path, "trace", str(tmp_path / "traces"))
    assert status == 0, output
    assert "rollout_complete: COMPLETED" in output
    assert "my_event" in output
    assert "→ add(" in output


async def test_trace_reads_damaged_files_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_bytes(b"\xff not json")
    status, output = await _rollout(tmp_path, "trace", "garbage.json")
    assert status == 1
    assert "neither a .jsonl trace nor JSON" in output
    assert "Traceback" not in output

    (tmp_path / "rollout-x.jsonl").write_text('{"event": "pre_llm", "turn": 1}\n{oops\n[1]\n')
    status, output = await _rollout(tmp_path, "trace", "rollout-x.jsonl")
    assert status == 0, output
    assert "rollout-x.jsonl:2: not JSON, skipped" in output
    assert "Traceback" not in output

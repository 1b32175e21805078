"""``rollout validate``: the README's agent passes; a broken one gets one clear line per
problem and exit 1 (or 2 when it cannot even be loaded), never a traceback; ``--json`` for
machines; ``rollout serve`` refuses an invalid agent the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import rollout_cli as _rollout

README = Path(__file__).parents[2] / "README.md"

BROKEN = {
    "syntax": ("from rollout import Agent\nagent = Agent(name='x'\n", 2, "syntax.py:2:"),
    "annotation": (
        "from rollout import Agent, tool\n\n@tool\ndef f(x: complex) -> str:\n"
        "    '''Doc.'''\n    return ''\n\nagent = Agent('a', tools=[f])\n",
        2,
        "cannot describe the annotation <class 'complex'> as JSON Schema (annotation.py:3)",
    ),
    "raises": ("raise RuntimeError('boom at import')\n", 2, "raised RuntimeError: boom at import"),
    "missing": ("x = 1\n", 2, "'missing' has no attribute 'agent'"),
    "not_an_agent": ("agent = 42\n", 2, "is a int, not a rollout.Agent"),
    "duplicate_tools": (
        "from rollout import Agent, tool\n\n@tool\ndef f() -> str:\n    '''Doc.'''\n"
        "    return ''\n\nagent = Agent('a', tools=[f, f])\n",
        2,
        "tool names must be unique, repeated: f",
    ),
    "signatures": (
        "from rollout import Agent\n\ndef reward(a, b):\n    return 1.0\n\n"
        "def loop(ctx):\n    pass\n\nagent = Agent('a', reward=reward, loop=loop)\n",
        1,
        "reward: reward must take one argument (trajectory)",
    ),
    "undescribed_tool": (
        "from rollout import Agent, tool\n\n@tool\ndef f() -> str:\n    return ''\n\n"
        "agent = Agent('a', tools=[f])\n",
        1,
        "tool 'f': no description",
    ),
}


async def test_the_readme_agent_is_valid(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    status, out, err = await _rollout(tmp_path, "validate", "-m", "weather:agent")
    assert (status, err) == (0, "")
    assert out == "weather:agent: agent 'weather' is valid (tools: lookup)\n"

    status, out, _ = await _rollout(tmp_path, "validate", "-m", "weather:agent", "--json")
    assert status == 0
    report = json.loads(out)
    assert (report["valid"], report["tools"], report["problems"]) == (True, ["lookup"], [])


@pytest.mark.parametrize("name", sorted(BROKEN))
async def test_a_broken_agent_gets_one_clear_line(tmp_path: Path, name: str) -> None:
    source, expected_status, expected = BROKEN[name]
    (tmp_path / f"{name}.py").write_text(source)
    status, out, err = await _rollout(tmp_path, "validate", "-m", f"{name}:agent")

    assert status == expected_status
    assert expected in err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2  # one line per problem


async def test_serve_runs_the_same_checks_first(tmp_path: Path) -> None:
    source, _, expected = BROKEN["signatures"]
    (tmp_path / "signatures.py").write_text(source)
    status, _, err = await _rollout(tmp_path, "serve", "-m", "signatures:agent", "--port", "0")
    assert status == 1
    assert expected in err
    assert "loop: loop must be 'async def loop(ctx)'" in err
    assert "listening" not in err


async def test_demo_runs_the_readme_agent_end_to_end(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    rows = [
        {"id": "w-1", "user_prompt": "What is the temperature in Paris?", "ground_truth": "18"},
        {"id": "w-2", "user_prompt": "How cold is it in Oslo?", "ground_truth": "4"},
    ]
    (tmp_path / "weather.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status, out, err = await _rollout(
        tmp_path, "demo", "-m", "weather:agent", "--dataset", "weather.jsonl"
    )
    assert status == 0, out + err
    results = json.loads((tmp_path / "rollout-demo-results.json").read_text())
    assert [(r["status"], r["reward"]) for r in results] == [("COMPLETED", 1.0)] * 2
    assert results[0]["final_answer"] == "The tools said: 18 celsius"

"""The trace writer: every event written in order, also when the run is cancelled right
after; secrets redacted; never raising; a full buffer drops (and counts) instead of
waiting."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.lowlevel

from rollout._trace import BUFFER_EVENTS, NO_TRACE, TraceSink, trace_file_name


def _lines(sink: TraceSink, rollout_id: str) -> list[dict[str, object]]:
    text = (sink.directory / trace_file_name(rollout_id)).read_text()
    return [json.loads(line) for line in text.splitlines()]


async def test_events_are_written_in_order_and_flushed_on_cancel(tmp_path: Path) -> None:
    sink = TraceSink(tmp_path, secrets=["inbound-key"])
    async with trio.open_nursery() as services:
        await services.start(sink.run)
        trace = sink.trace("r/1", api_key="sk-trace-9")
        for turn in range(5):
            trace.event("step", turn=turn, note="uses sk-trace-9 and inbound-key")
            await trio.lowlevel.checkpoint()
        for turn in range(5, 10):
            trace.event("step", turn=turn, odd=object(), text="lone \ud800 surrogate")
        services.cancel_scope.cancel()  # right after: what was handed over is still written

    lines = _lines(sink, "r/1")
    assert [line["turn"] for line in lines] == list(range(10))
    assert all(line["rollout_id"] == "r/1" and line["event"] == "step" for line in lines)
    raw = (sink.directory / trace_file_name("r/1")).read_text()
    assert "sk-trace-9" not in raw
    assert "inbound-key" not in raw
    assert lines[0]["note"] == "uses *** and ***"
    assert lines[9]["text"] == "lone \ud800 surrogate"  # escaped as JSON, never a failure


async def test_a_full_buffer_drops_events_instead_of_waiting(tmp_path: Path) -> None:
    sink = TraceSink(tmp_path)
    trace = sink.trace("r")
    for turn in range(BUFFER_EVENTS + 5):  # no writer running: nothing drains the buffer
        trace.event("e", turn=turn)
    assert sink.dropped == 5


def test_file_names_are_safe_and_distinct() -> None:
    assert trace_file_name("calc-001") == "rollout-calc-001.jsonl"
    odd = {trace_file_name(i) for i in ("a/b", "a_b", "a b", "../x")}
    assert len(odd) == 4
    assert all("/" not in name and " " not in name for name in odd)


def test_without_a_directory_tracing_does_nothing() -> None:
    NO_TRACE.event("anything", turn=0, data=object())  # no sink: nothing happens, no error

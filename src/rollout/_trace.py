"""Per-rollout traces: one JSONL file per rollout, written off the event loop.

With a trace directory (``rollout serve --log DIR`` or ``ROLLOUT_DEBUG_DIR``; ``--log`` for
``rollout test`` and ``eval``), each rollout gets ``DIR/<start time>/rollout-<id>.jsonl``:
one JSON object per event, in order, each with ``ts`` (Unix time, seconds), ``event``,
``rollout_id`` and ``turn``. The server writes ``pre_llm``, ``llm_response``,
``tool_results``, ``rollout_complete`` and ``delivery``; agent code adds its own with
``ctx.log_event(name, **data)``.

Tracing never blocks, fails or slows a rollout: :meth:`Trace.event` serializes the event
and hands it to a bounded channel without waiting (when the writer falls behind, events are
dropped and counted in :attr:`TraceSink.dropped`), and one writer task appends batches in a
worker thread. The rollout's ``api_key`` and the server's inbound key are replaced by
``***`` in every line. Without a directory, :data:`NO_TRACE` does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

__all__ = ["NO_TRACE", "Trace", "TraceSink", "safe_name", "trace_file_name"]

log = logging.getLogger("rollout.trace")

#: Events held for the writer at most; past that they are dropped (and counted).
BUFFER_EVENTS = 10_000
#: Events written per worker-thread call at most.
BATCH_EVENTS = 512


def safe_name(text: str) -> str:
    """``text`` made safe for a file name (and, when that changed it, a short hash so that
    two texts never share a name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100]
    if safe != text:
        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


def trace_file_name(rollout_id: str) -> str:
    """``rollout-<id>.jsonl``, the id made safe (:func:`safe_name`)."""
    return f"rollout-{safe_name(rollout_id)}.jsonl"


class Trace:
    """The events of one rollout; a no-op when ``sink`` is None."""

    def __init__(
        self, sink: TraceSink | None, rollout_id: str, secrets: Iterable[str | None] = ()
    ) -> None:
        self.sink = sink
        self.rollout_id = rollout_id
        self._secrets = [s for s in secrets if s]
        self._file = trace_file_name(rollout_id)

    @property
    def enabled(self) -> bool:
        """Whether events are kept: callers skip building costly event data when not."""
        return self.sink is not None

    def event(self, name: str, *, turn: int, **data: Any) -> None:
        """Record event ``name`` at ``turn``; never raises, never waits."""
        if self.sink is None:
            return
        record = {"ts": time.time(), "event": name, "rollout_id": self.rollout_id, "turn": turn}
        record.update(data)
        try:
            line = json.dumps(record, default=repr)  # ASCII: any string can be written
        except (TypeError, ValueError, RecursionError) as exc:
            fallback = {**record, **{k: repr(v) for k, v in data.items()}, "note": str(exc)}
            line = json.dumps(fallback)
        for secret in self._secrets:
            line = line.replace(secret, "***")
        self.sink.put(self._file, line)


#: The trace of a rollout when tracing is off.
NO_TRACE = Trace(None, "")


class TraceSink:
    """Where the traces of one server (or one ``rollout test`` run) go: ``root/<start
    time>/``. Run :meth:`run` as a service in a nursery; :meth:`trace` makes a rollout's
    :class:`Trace`."""

    def __init__(self, root: Path, *, secrets: Iterable[str | None] = ()) -> None:
        self.directory = root / time.strftime("%Y%m%d-%H%M%S")
        self._secrets = [s for s in secrets if s]
        self._send, self._receive = trio.open_memory_channel[tuple[str, str]](BUFFER_EVENTS)
        #: Events dropped because the writer fell behind.
        self.dropped = 0

    def trace(self, rollout_id: str, api_key: str | None = None) -> Trace:
        return Trace(self, rollout_id, [*self._secrets, api_key])

    def put(self, file: str, line: str) -> None:
        try:
            self._send.send_nowait((file, line))
        except trio.WouldBlock:
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write events until cancelled; then write what is buffered (shielded, bounded)."""
        await trio.to_thread.run_sync(self._make_directory)
        task_status.started()
        try:
            while True:
                batch = [await self._receive.receive()]
                while len(batch) < BATCH_EVENTS:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                with trio.CancelScope(shield=True):  # a batch taken is a batch written
                    await self._write(batch)
        finally:
            with trio.move_on_after(5) as scope:
                scope.shield = True
                rest = []
                while True:
                    try:
                        rest.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                if rest:
                    await self._write(rest)

    def _make_directory(self) -> None:
        """Create :attr:`directory`; another run that started the same second gets
        ``<time>-2``, ``-3``, ...: two runs never share a file."""
        base, number = self.directory, 1
        while True:
            try:
                self.directory.mkdir(parents=True)
                return
            except FileExistsError:
                number += 1
                self.directory = base.with_name(f"{base.name}-{number}")

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        by_file: dict[str, list[str]] = {}
        for file, line in batch:
            by_file.setdefault(file, []).append(line)

        def append() -> None:
            for file, lines in by_file.items():
                with (self.directory / file).open("a", encoding="utf-8") as handle:
                    handle.write("\n".join(lines) + "\n")

        try:
            await trio.to_thread.run_sync(append)
        except Exception as exc:  # a full disk must not stop the server: count and go on
            self.dropped += len(batch)
            log.error("trace: cannot write to %s: %s", self.directory, exc)

"""The outbox: results kept on disk until a trainer acknowledged them (PROTOCOL.md §2,
"Our rule": a result that could not be delivered is kept and delivered after restart).

Write-ahead: the supervisor writes each result here *before* its first delivery attempt and
removes it once a 2xx acknowledged it. Whatever is still here when the process stops (the
trainer was down, the shutdown delivery budget ran out, the process was killed) is
delivered again by the next server started on the same directory.

One JSON file per result, ``<sha256 of the idempotency key>.json``, written atomically
(temporary file, fsync, rename) with mode 0600: a file holds the rollout's ``api_key``,
which the later delivery needs for its ``Authorization`` header. Files are small (the
result's trajectory) and independent, so a damaged one is set aside (``.bad``), never
blocking the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs

from ._json import JSON

__all__ = ["Outbox", "PendingResult"]

log = logging.getLogger("rollout.outbox")


@attrs.frozen
class PendingResult:
    """A result waiting for its acknowledgement: where it goes, with which key, and the
    wire JSON of ``POST {server_url}/v1/rollout/completed``."""

    key: str
    server_url: str
    result: dict[str, JSON]
    api_key: str | None = attrs.field(default=None, repr=False)
    #: SHA-256 (hex) of the init's canonical JSON: a re-sent identical init is recognized.
    digest: str = ""

    @property
    def rollout_id(self) -> str:
        return str(self.result.get("rollout_id", ""))


@attrs.frozen
class Outbox:
    """The results in ``directory`` (created on first use). Methods are blocking file I/O:
    call them from a worker thread (``trio.to_thread.run_sync``)."""

    directory: Path

    def path_for(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def put(self, pending: PendingResult) -> Path:
        """Write ``pending`` durably; returns its file. Raises :class:`OSError`."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(pending.key)
        temporary = path.with_suffix(".tmp")
        data = json.dumps(attrs.asdict(pending), ensure_ascii=False).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        return path

    def remove(self, key: str) -> None:
        """Forget the result of ``key`` (acknowledged, or refused for good)."""
        self.path_for(key).unlink(missing_ok=True)

    def pending(self) -> list[PendingResult]:
        """Every result still waiting, oldest first. Unreadable files are renamed to
        ``.bad`` and logged, so they are looked at by a person, not retried forever."""
        if not self.directory.is_dir():
            return []
        found: list[tuple[float, PendingResult]] = []
        for path in self.directory.glob("*.json"):
            try:
                data: Any = json.loads(path.read_text())
                pending = PendingResult(
                    key=data["key"],
                    server_url=data["server_url"],
                    result=data["result"],
                    api_key=data.get("api_key"),
                    digest=data.get("digest", ""),
                )
                if not isinstance(pending.result, dict):
                    raise TypeError("result is not an object")
                found.append((path.stat().st_mtime, pending))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("outbox: %s is unreadable (%s); renamed to .bad", path.name, exc)
                with contextlib.suppress(OSError):
                    path.replace(path.with_suffix(".bad"))
        return [pending for _, pending in sorted(found, key=lambda item: item[0])]

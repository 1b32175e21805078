"""The outbox: results kept on disk until a trainer acknowledged them, and the record of
what was delivered (docs/PROTOCOL.md §5.3: a result that could not be delivered is kept
and delivered after restart; a re-sent init of a delivered rollout does not run it again).

Write-ahead: the supervisor writes each result here *before* its first delivery attempt.
Once a 2xx acknowledged it, the file is replaced at once by a small *delivered* record (no
result, no api key) that lets a later process answer a re-sent init with its ``202``
instead of a second run; delivered records are dropped after the idempotency TTL. Whatever
result is still here when the process stops (the trainer was down, the shutdown delivery
budget ran out, the process was killed) is delivered by the next server started on the
same directory.

One JSON file per rollout, ``<sha256 of the rollout_id>.json``, written atomically
(temporary file, fsync, rename, fsync of the directory) with mode 0600, in a directory of
mode 0700: a pending result's file holds the rollout's ``api_key``, which its later
delivery needs for the ``Authorization`` header. Files are small and independent, so a
damaged one is set aside (``.bad``), never blocking the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import attrs

from .. import _json
from .._wire.models import check_api_key, check_server_url
from ..errors import RolloutError

__all__ = ["Delivered", "Outbox", "OutboxError", "PendingResult"]

log = logging.getLogger("rollout.outbox")


class OutboxError(RolloutError):
    """The outbox directory cannot be used safely (e.g. others may read its api keys)."""


@attrs.frozen
class PendingResult:
    """A result waiting for its acknowledgement: where it goes, with which key, and the
    encoded body of ``POST {server_url}/v1/rollout/completed`` (strict UTF-8 JSON)."""

    rollout_id: str
    server_url: str
    result: bytes = attrs.field(repr=False)
    api_key: str | None = attrs.field(default=None, repr=False)
    #: SHA-256 (hex) of the init's canonical JSON: a re-sent identical init is recognized.
    digest: str = ""
    idempotency_key: str | None = None


@attrs.frozen
class Delivered:
    """What is kept of a delivered rollout: enough to answer a re-sent init (``202``, no
    second run) or refuse a different one (``409``). ``delivered_at``: Unix time, seconds."""

    rollout_id: str
    digest: str
    idempotency_key: str | None
    delivered_at: float


@attrs.frozen
class Outbox:
    """The files in ``directory`` (created on first use, mode 0700). Methods are blocking
    file I/O: call them from a worker thread (``trio.to_thread.run_sync``)."""

    directory: Path

    def path_for(self, rollout_id: str) -> Path:
        return self.directory / f"{hashlib.sha256(rollout_id.encode()).hexdigest()}.json"

    def check_private(self) -> None:
        """Raise :class:`OutboxError` when the directory exists but is not a directory or
        is open to other users (group or other permission bits): its files hold api keys."""
        try:
            mode = self.directory.stat().st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutboxError(f"outbox {self.directory}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(mode):
            raise OutboxError(f"outbox {self.directory} is not a directory")
        if stat.S_IMODE(mode) & 0o077:
            raise OutboxError(
                f"outbox {self.directory} has mode {stat.S_IMODE(mode):04o}: other users could"
                f" read the api keys it holds; run: chmod 700 {self.directory}"
            )

    def put(self, pending: PendingResult) -> Path:
        """Write ``pending`` durably; returns its file. Raises :class:`OSError`."""
        head = _json.dumps(
            {
                "rollout_id": pending.rollout_id,
                "idempotency_key": pending.idempotency_key,
                "server_url": pending.server_url,
                "api_key": pending.api_key,
                "digest": pending.digest,
            }
        )
        return self._write(pending.rollout_id, head[:-1] + b',"result":' + pending.result + b"}")

    def mark_delivered(self, delivered: Delivered) -> None:
        """Replace a pending result by its delivered record (the api key leaves the disk)."""
        self._write(delivered.rollout_id, _json.dumps({"delivered": attrs.asdict(delivered)}))

    def remove(self, rollout_id: str) -> None:
        """Forget ``rollout_id`` (refused for good, or its delivered record expired)."""
        self.path_for(rollout_id).unlink(missing_ok=True)

    def _write(self, rollout_id: str, data: bytes) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.path_for(rollout_id)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        self._sync_directory()
        return path

    def _sync_directory(self) -> None:
        """fsync the directory, so the rename itself survives a crash."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(
        self, *, keep_delivered_for: float, now: float
    ) -> tuple[list[PendingResult], list[Delivered]]:
        """Every result still waiting (oldest first) and every delivered record younger
        than ``keep_delivered_for`` seconds at Unix time ``now`` (older ones are removed).
        Unreadable files are renamed to ``.bad`` and logged, so they are looked at by a
        person, not retried forever."""
        if not self.directory.is_dir():
            return [], []
        found: list[tuple[float, PendingResult]] = []
        delivered: list[Delivered] = []
        for path in self.directory.glob("*.json"):
            try:
                data: Any = json.loads(path.read_bytes())
                if "delivered" in data:
                    record = Delivered(**data["delivered"])
                    if now - record.delivered_at > keep_delivered_for:
                        path.unlink(missing_ok=True)
                    else:
                        delivered.append(record)
                    continue
                pending = _pending_from(data)
                if path != self.path_for(pending.rollout_id):  # written by an older version
                    path = path.replace(self.path_for(pending.rollout_id))
                found.append((path.stat().st_mtime, pending))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("outbox: %s is unreadable (%s); renamed to .bad", path.name, exc)
                with contextlib.suppress(OSError):
                    path.replace(path.with_suffix(".bad"))
        return [pending for _, pending in sorted(found, key=lambda item: item[0])], delivered


def _pending_from(data: Any) -> PendingResult:
    """A pending result from a file's JSON; raises ValueError, KeyError or TypeError for a
    file that an init could not have produced (the same checks as an init's fields), so a
    poisoned file is set aside instead of failing every start."""
    result = data["result"]
    if not isinstance(result, dict):
        raise TypeError("result is not an object")
    rollout_id = data.get("rollout_id", result.get("rollout_id"))
    if not isinstance(rollout_id, str):
        raise TypeError("rollout_id is not a string")
    # Files of earlier versions name the idempotency key (or the rollout_id) "key".
    key = data.get("idempotency_key", data.get("key"))
    server_url, api_key = data["server_url"], data.get("api_key")
    if not isinstance(server_url, str) or not isinstance(api_key, str | None):
        raise TypeError("server_url or api_key is not a string")
    check_server_url(server_url)
    check_api_key(api_key)
    return PendingResult(
        rollout_id=rollout_id,
        server_url=server_url,
        result=_json.dumps(result),
        api_key=api_key,
        digest=data.get("digest", ""),
        idempotency_key=None if key == rollout_id else key,
    )

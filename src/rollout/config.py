"""Server settings, one frozen object. Times in seconds, sizes in bytes.

The command line (:mod:`rollout.cli`) fills it from flags and ``ROLLOUT_SERVER_*``
environment variables; tests build it directly with small timeouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from .trainer import RetryPolicy

__all__ = ["ServerConfig"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class ServerConfig:
    """Everything a rollout server can be tuned with.

    - ``api_key``: when set, ``POST /v1/rollout/init`` needs ``Authorization: Bearer <key>``.
    - ``max_concurrent_rollouts``: rollouts whose agent loop runs at once; the rest queue.
    - ``max_queued_rollouts``: unfinished rollouts admitted beyond that before ``429``.
    - ``rollout_timeout``: wall-clock deadline of one rollout, counted from its ``202``
      (queueing included), ending it with ``finish_reason`` "timeout".
    - ``drain_timeout``: on SIGTERM/SIGINT, how long unfinished rollouts may go on.
    - ``shutdown_delivery_timeout``: then, how long their results may take to deliver.
    - ``graceful_timeout``: after the drain, how long Hypercorn lets open HTTP connections
      finish before closing them. Idle keep-alive connections from trainers hold shutdown
      for this long (Hypercorn's Trio worker does not close them early), so keep it short.
    - ``idempotency_ttl``: how long a finished rollout's key is remembered.
    - ``outbox_dir``: where results wait on disk until acknowledged (:mod:`rollout.outbox`);
      ``None`` keeps them in memory only, so a stopped process loses undelivered ones.
    - ``max_body_bytes``: largest init body (``413`` beyond).
    - ``max_tool_threads``: worker threads for sync tools, across all rollouts.
    - ``max_connections``: the pooled HTTP client's connection limit towards trainers.
    - ``max_keepalive_connections``: idle connections it keeps open. Small on purpose:
      httpcore polls every pooled connection on each request, so at 64 concurrent rollouts
      keeping 64 alive cost twice the CPU of keeping 16 (``nox -s bench``). Raise it for
      trainers behind TLS, where a new connection costs a handshake.
    - ``chat_retry`` / ``delivery_retry``: see :class:`~rollout.trainer.RetryPolicy`.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    max_concurrent_rollouts: int = attrs.field(default=64, validator=_positive)
    max_queued_rollouts: int = attrs.field(default=1024, validator=attrs.validators.ge(0))
    rollout_timeout: float = attrs.field(default=600.0, validator=_positive)
    drain_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    shutdown_delivery_timeout: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))
    graceful_timeout: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    idempotency_ttl: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    outbox_dir: Path | None = None
    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    max_tool_threads: int = attrs.field(default=16, validator=_positive)
    max_connections: int = attrs.field(default=256, validator=_positive)
    max_keepalive_connections: int = attrs.field(default=16, validator=attrs.validators.ge(0))
    chat_retry: RetryPolicy = RetryPolicy(
        attempts=5, request_timeout=300.0, wait_initial=0.5, wait_max=10.0
    )
    # Results are retried far longer than chat turns: losing one loses the whole rollout.
    delivery_retry: RetryPolicy = RetryPolicy(
        attempts=None, timeout=600.0, request_timeout=30.0, wait_initial=0.5, wait_max=30.0
    )

    @property
    def shutdown_budget(self) -> float:
        """Longest graceful shutdown: drain, then the last deliveries, plus a margin."""
        return self.drain_timeout + self.shutdown_delivery_timeout + self.graceful_timeout + 5.0

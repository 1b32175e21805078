"""Server settings, one frozen object. Times in seconds, sizes in bytes.

The command line (:mod:`rollout.cli`) fills it from flags and ``ROLLOUT_SERVER_*``
environment variables; tests build it directly with small timeouts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ._trainer.policy import TrainerPolicy

__all__ = ["RetryPolicy", "ServerConfig"]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _entries(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _valid_allow_list(_: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    TrainerPolicy.from_entries(value)  # raises ValueError naming the entry


@attrs.frozen
class RetryPolicy:
    """How one kind of trainer request is retried. Times in seconds.

    ``attempts`` counts the first try (``None``: unlimited, bounded by ``timeout``);
    ``timeout`` bounds all attempts and waits together, cutting off an attempt under way
    (``None``: only the caller's deadline);
    ``request_timeout`` bounds one attempt (connect, each read and write).
    """

    attempts: int | None = 5
    timeout: float | None = None
    request_timeout: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0


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
    - ``trace_dir``: where per-rollout traces go (:mod:`rollout._trace`); ``None``: none.
    - ``store``: where idempotency records, rollout state, leases and undelivered results
      live (:mod:`rollout._store`): ``"memory"`` (this process only: a stopped process
      loses undelivered results), ``"sqlite:PATH"`` (durable, shared by the worker
      processes of one host) or ``"redis://HOST:PORT/DB"`` (shared by many hosts).
    - ``lease_ttl``: how long a worker's lease on its rollouts lasts without renewal
      (renewed every third of it); after a worker dies, its rollouts are taken over by a
      live worker this long after its last renewal.
    - ``max_body_bytes``: largest init body (``413`` beyond).
    - ``max_admitted_bytes``: init bytes of all rollouts queued or running together; an init
      that would pass it is refused with ``429`` (next to the count budget above).
    - ``max_undelivered_results`` / ``max_undelivered_bytes``: results waiting for their
      acknowledgement (in this worker). They do not count against the
      running/queued budget, so a dead trainer cannot starve the others; past either bound
      new inits get ``429`` until deliveries catch up.
    - ``max_response_bytes``: largest trainer answer read (decoded); a larger one fails its
      rollout with a clear error and is never read whole.
    - ``allow_trainers``: the trainer allow-list (``HOST``, ``HOST:PORT`` or a CIDR, see
      :mod:`rollout._policy`); empty allows any trainer but link-local and metadata
      addresses, which are always refused unless listed.
    - ``max_tool_threads``: worker threads for sync tools, across all rollouts.
    - ``max_connections``: connections to trainers at most, all trainers together (None:
      no limit: every outstanding chat call or delivery has its own connection, so the
      trainer sees every rollout's call at once; idle ones are kept 30 s for reuse).
    - ``chat_retry`` / ``delivery_retry``: see :class:`RetryPolicy`.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    max_concurrent_rollouts: int = attrs.field(default=64, validator=_positive)
    max_queued_rollouts: int = attrs.field(default=1024, validator=attrs.validators.ge(0))
    rollout_timeout: float = attrs.field(default=600.0, validator=_positive)
    drain_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    shutdown_delivery_timeout: float = attrs.field(default=15.0, validator=attrs.validators.ge(0))
    graceful_timeout: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    idempotency_ttl: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    store: str = "memory"
    lease_ttl: float = attrs.field(default=10.0, validator=_positive)
    trace_dir: Path | None = None
    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    max_admitted_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=_positive)
    max_undelivered_results: int = attrs.field(default=4096, validator=_positive)
    max_undelivered_bytes: int = attrs.field(default=512 * 1024 * 1024, validator=_positive)
    max_response_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    allow_trainers: tuple[str, ...] = attrs.field(
        default=(), converter=_entries, validator=_valid_allow_list
    )
    max_tool_threads: int = attrs.field(default=16, validator=_positive)
    max_connections: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    chat_retry: RetryPolicy = RetryPolicy(
        attempts=5, request_timeout=300.0, wait_initial=0.5, wait_max=10.0
    )
    # Results are retried far longer than chat turns: losing one loses the whole rollout.
    delivery_retry: RetryPolicy = RetryPolicy(
        attempts=None, timeout=600.0, request_timeout=30.0, wait_initial=0.5, wait_max=30.0
    )

    @property
    def trainer_policy(self) -> TrainerPolicy:
        """:attr:`allow_trainers`, parsed."""
        return TrainerPolicy.from_entries(self.allow_trainers)

    @property
    def shutdown_budget(self) -> float:
        """Longest graceful shutdown: drain, then the last deliveries, plus a margin."""
        return self.drain_timeout + self.shutdown_delivery_timeout + self.graceful_timeout + 5.0

"""Every exception this package raises, in one place.

Hierarchy::

    RolloutError
    ├── TrainerError                 the trainer failed a request (no retry left)
    │   ├── TrainerHTTPError         it answered a non-2xx status
    │   ├── TrainerTransportError    connect/read/write failed or timed out
    │   ├── MalformedCompletionError it answered 2xx with a body that is not a completion
    │   └── TrainerExchangeError     the exchange failed otherwise (too large, undecodable, ...)
    │       └── TrainerNotAllowedError  the trainer's address is refused (docs/PROTOCOL.md §8)
    ├── EngineFailure                the rollout engine stopped (a bug), the server exits
    ├── AgentError                   agent code broke a protocol rule (e.g. unanswered tool calls)
    └── ToolError                    raised *by a tool* to send the model an error text

Error messages never contain the trainer's ``api_key``: it only ever travels in headers.
A trainer error's message never quotes the trainer's answer either; a short, cleaned
excerpt of it is kept apart in :attr:`TrainerError.body`, for results that go back to that
same trainer only (docs/PROTOCOL.md §4.3).
"""

from __future__ import annotations


class RolloutError(Exception):
    """Base class of this package's errors."""


class TrainerError(RolloutError):
    """The trainer failed a request, after the retries it was allowed (docs/PROTOCOL.md §4.3).

    ``body``: an excerpt of the trainer's answer (at most a few hundred characters,
    control characters removed), or None.
    """

    def __init__(self, message: str, *, body: str | None = None) -> None:
        super().__init__(message)
        self.body = body


class TrainerHTTPError(TrainerError):
    """The trainer answered a non-2xx status.

    ``status`` is the HTTP status; ``retry_after`` the ``Retry-After`` header in seconds,
    when it sent a numeric one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message, body=body)
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """5xx, 408 and 429 are worth retrying; any other 4xx is final (docs/PROTOCOL.md §4.3)."""
        return self.status >= 500 or self.status in (408, 429)


class TrainerTransportError(TrainerError):
    """The request never got an answer: connection refused or reset, or a timeout."""


class MalformedCompletionError(TrainerError):
    """The trainer answered 2xx, but the body is not a usable chat completion."""


class TrainerExchangeError(TrainerError):
    """The exchange failed in a way a retry cannot mend: the answer was larger than the
    configured cap, could not be decoded, or the request could not be sent at all."""


class TrainerNotAllowedError(TrainerExchangeError):
    """The trainer's address is refused by the server's trainer policy (docs/PROTOCOL.md §8)."""


class AgentError(RolloutError):
    """Agent code broke a protocol rule, e.g. a chat request before every tool call was
    answered (docs/PROTOCOL.md §7.2). Ends the rollout with ``finish_reason`` "error"."""


class EngineFailure(RolloutError):
    """The rollout engine itself stopped: a bug, since every rollout's own failure becomes
    its result. ``/health`` then answers ``503`` with status "failed", inits get ``503``,
    and :func:`~rollout.serve` raises this after stopping, so the process exits non-zero."""


class ToolError(RolloutError):
    """Raise this inside a tool to answer the model with ``"Error: <message>"``.

    Any other exception a tool raises is answered the same way; this one just says that
    the message was written for the model.
    """

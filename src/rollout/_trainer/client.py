"""The trainer client: chat completions and result delivery, with retries.

One :class:`TrainerClient` sends through one long-lived, pooled transport shared by every
rollout (the reference opened a client per rollout): the server's
:class:`~rollout._trainer.pool.ConnectionPool` through its lean :meth:`send` (no
:class:`httpx.Request`; the body encoded when written, so an outstanding call holds no copy),
any other httpx transport with an :class:`httpx.Request`. Never through
:class:`httpx.AsyncClient`: the client's layer (URL merging, cookies, auth flows, redirects,
event hooks) is nothing a trainer call needs, and cost half the CPU of every call
(docs/PERFORMANCE.md). Retries use :mod:`stamina`:
capped exponential backoff with jitter, on 5xx/408/429, timeouts and transport errors, never
on other 4xx or anything else (docs/PROTOCOL.md §4.3). Every failure, whatever the HTTP stack
raised, is a :class:`~rollout.errors.TrainerError`: nothing a trainer answers can escape
a rollout. A ``Retry-After`` header (seconds) replaces the computed
backoff. Chat retries never go past the caller's Trio deadline: the retry budget is the
time left in the enclosing cancel scope.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

import httpx
import stamina
import trio

from .. import _json
from .._json import JSON
from .._version import version
from .._wire.validation import ValidationError
from ..config import RetryPolicy
from ..errors import (
    AgentError,
    MalformedCompletionError,
    TrainerError,
    TrainerExchangeError,
    TrainerHTTPError,
    TrainerTransportError,
)
from .chat import Completion, openai_body, parse_completion
from .decoding import TooLarge, read_decoded
from .http11 import Content
from .pool import ConnectionPool
from .retries import log_retry, retry_after, retry_hook, time_left
from .transport import endpoint, parsed_url, redact_url, same_timeouts, sender

__all__ = ["RetryPolicy", "TrainerClient"]

log = logging.getLogger("rollout.trainer")

CHAT_PATH = "/v1/chat/completions"
#: Where the synchronous variant (docs/PROTOCOL.md §6) sends LLM turns (the same chat body).
SYNC_COMPLETIONS_PATH = "/v1/completions"
COMPLETED_PATH = "/v1/rollout/completed"
#: How much of a trainer's answer an error keeps (:attr:`TrainerError.body`).
_BODY_EXCERPT_CHARS = 300
#: How much of an acknowledgement's body is read (and dropped) to keep its connection.
_DISCARD_BYTES = 64 * 1024


#: The bound of a request whose policy has no ``timeout`` (the caller's deadline holds).
_UNBOUNDED: contextlib.AbstractContextManager[object] = contextlib.nullcontext()

#: Sent with every request (both encodings decoded within the size limit: .decoding).
_BASE_HEADERS = (
    (b"user-agent", f"rollout/{version()}".encode()),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"content-type", b"application/json"),
)


class _Payload:
    """A request body, as :data:`~rollout._trainer.http11.Content`: the encoded bytes are
    handed over at the first attempt and dropped, and encoded again from ``source`` for a
    retry. An outstanding chat call then holds no copy of its body, which the rollout's
    history already holds (docs/PERFORMANCE.md). Without ``source`` the bytes are kept."""

    __slots__ = ("_encoded", "_source")

    def __init__(self, encoded: bytes, source: Mapping[str, JSON] | None = None) -> None:
        self._encoded: bytes | None = encoded
        self._source = source

    def __call__(self) -> bytes:
        encoded = self._encoded
        if self._source is None:
            assert encoded is not None
            return encoded
        self._encoded = None
        return encoded if encoded is not None else _json.dumps(self._source)


def _chat_payload(body: Mapping[str, JSON]) -> _Payload:
    """``body`` as strict JSON, encoded again for each retry. Raises
    :class:`~rollout.errors.AgentError` when it is not strict JSON."""
    try:
        return _Payload(_json.dumps(body), body)
    except _json.JSONError as exc:
        raise AgentError(f"the chat request cannot be sent as JSON: {exc}") from None


def _excerpt(raw: bytes) -> str:
    """A short one-line excerpt of a trainer's answer: control characters dropped."""
    text = raw[: _BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(text.split())[:_BODY_EXCERPT_CHARS]


class ClientEvents(Protocol):
    """What the trainer client reports as it goes (``kind``: "chat" or "delivery")."""

    def attempt(self, kind: str) -> None: ...
    def retry(self, kind: str) -> None: ...
    def failure(self, kind: str, error: str) -> None: ...
    def chat_seconds(self, seconds: float) -> None: ...


class _NoEvents:
    def attempt(self, kind: str) -> None:
        pass

    def retry(self, kind: str) -> None:
        pass

    def failure(self, kind: str, error: str) -> None:
        pass

    def chat_seconds(self, seconds: float) -> None:
        pass


class TrainerClient:
    """Talks to trainers: ``POST {server_url}/v1/chat/completions`` and
    ``POST {server_url}/v1/rollout/completed``.

    ``transport`` (any :class:`httpx.AsyncBaseTransport`; the server's is
    :func:`~rollout._trainer.transport.policed_transport`) is owned by the caller, who closes it
    after the last request (the app does so only after every rollout was drained, see
    :mod:`rollout.app`). Every answer is read as a
    stream and abandoned past ``max_response_bytes`` (decoded bytes), so one trainer cannot
    exhaust the server's memory. Every failure of an exchange is a
    :class:`~rollout.errors.TrainerError`, whatever the HTTP stack raised.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        chat: RetryPolicy,
        delivery: RetryPolicy,
        max_response_bytes: int = 8 * 1024 * 1024,
        chat_path: str = CHAT_PATH,
        model: str | None = None,
        events: ClientEvents | None = None,
    ) -> None:
        self.transport = transport
        self._send = sender(transport)
        self.chat_policy = chat
        self.delivery_policy = delivery
        self.max_response_bytes = max_response_bytes
        #: Where LLM turns go under ``server_url``: the path of the protocol revision served.
        self.chat_path = chat_path
        #: Set when the other side is an OpenAI-compatible server, not a trainer: every chat
        #: body then names this model and leaves out the trainer-only keys.
        self.model = model
        #: Told of every attempt, retry and failure (the server's metrics).
        self.events: ClientEvents = events or _NoEvents()

    def for_chat_path(self, path: str) -> TrainerClient:
        """This client (same connections and policies) sending LLM turns to ``path``; the
        synchronous variant uses :data:`SYNC_COMPLETIONS_PATH` (docs/PROTOCOL.md §6)."""
        return TrainerClient(
            self.transport,
            chat=self.chat_policy,
            delivery=self.delivery_policy,
            max_response_bytes=self.max_response_bytes,
            chat_path=path,
            model=self.model,
            events=self.events,
        )

    async def keep_connections_pruned(self) -> None:
        """Close idle connections as they expire, also while no call is made (our pool's
        :meth:`~rollout._trainer.pool.ConnectionPool.prune_forever`; other transports keep
        their own). Runs until cancelled."""
        if isinstance(self.transport, ConnectionPool):
            await self.transport.prune_forever()
        await trio.sleep_forever()

    async def chat(
        self,
        server_url: str,
        body: Mapping[str, JSON],
        *,
        api_key: str | None,
    ) -> Completion:
        """Send one chat request and parse the completion.

        Retries per :attr:`chat_policy` within the time left before the current Trio
        deadline. Raises :class:`~rollout.errors.TrainerHTTPError` (final status),
        :class:`~rollout.errors.TrainerTransportError` (no answer),
        :class:`~rollout.errors.MalformedCompletionError` (a 2xx that is not a completion;
        not retried: the trainer already generated it),
        :class:`~rollout.errors.TrainerExchangeError` (too large, undecodable, refused
        address) and :class:`~rollout.errors.AgentError` when the agent's history cannot be
        encoded as strict JSON.
        """
        url = endpoint(server_url, self.chat_path)
        if self.model is not None:
            body = openai_body(body, self.model)
        payload = _chat_payload(body)
        started = trio.current_time()
        try:
            raw = await self._post(url, payload, api_key, self.chat_policy, kind="chat")
        finally:
            self.events.chat_seconds(trio.current_time() - started)
        try:
            return parse_completion(_json.loads(raw))
        except ValueError as exc:  # ValidationError, or a body that is not strict JSON
            reason = exc if isinstance(exc, ValidationError) else f"not JSON ({exc})"
            raise MalformedCompletionError(
                f"POST {redact_url(url)} answered with a malformed chat completion: {reason}",
                body=_excerpt(raw),
            ) from None

    async def deliver_bytes(self, server_url: str, content: bytes, *, api_key: str | None) -> None:
        """Post an encoded result until a 2xx acknowledges it (any 2xx, whatever its body,
        docs/PROTOCOL.md §5.3). Retries per :attr:`delivery_policy`; the same bytes are sent
        on every attempt. Raises :class:`~rollout.errors.TrainerError` when it could not be
        delivered."""
        url = endpoint(server_url, COMPLETED_PATH)
        await self._post(url, _Payload(content), api_key, self.delivery_policy, kind="delivery")

    async def _post(
        self, url: str, content: Content, api_key: str | None, policy: RetryPolicy, *, kind: str
    ) -> bytes:
        """POST with retries; ``kind`` "chat" reads the answer, "delivery" only its status.

        The first attempt runs without retry state: nearly every call succeeds at once, and
        stamina's state (a dozen tenacity objects) held through each of 20,000 outstanding
        calls was a tenth of the memory per rollout (docs/PERFORMANCE.md). After a failure,
        stamina starts and replays it as its attempt 1, so the backoff, ``Retry-After`` and
        attempt count are what they would have been had it run from the start."""
        read = kind == "chat"
        parsed = parsed_url(url)
        headers = [(b"host", parsed.netloc), *_BASE_HEADERS]
        if api_key is not None:
            headers.append((b"authorization", f"Bearer {api_key}".encode()))
        elif parsed.userinfo:  # as httpx (and the reference) do; the api key comes first
            headers.append((b"authorization", _basic(parsed.username, parsed.password)))
        # ``timeout`` bounds the attempts too, not only the waits between them: an answer
        # trickled a byte per read timeout would otherwise hold an attempt for days.
        bound = _UNBOUNDED if policy.timeout is None else trio.move_on_after(policy.timeout)
        with bound:
            budget = time_left(policy.timeout)
            started = trio.current_time()
            try:
                return await self._attempt(url, content, headers, policy, kind=kind, read=read)
            except TrainerError as exc:
                first = exc
            if budget is not None:
                budget = max(0.0, budget - (trio.current_time() - started))
            attempt_number = 1
            try:
                async for attempt in stamina.retry_context(
                    on=retry_hook,
                    attempts=policy.attempts,
                    timeout=budget,
                    wait_initial=policy.wait_initial,
                    wait_max=policy.wait_max,
                    wait_jitter=policy.wait_jitter,
                ):
                    with attempt:
                        attempt_number = attempt.num
                        try:
                            if attempt.num == 1:
                                raise first
                            return await self._attempt(
                                url, content, headers, policy, kind=kind, read=read
                            )
                        except TrainerError as exc:
                            if log_retry(exc, attempt.num, attempt.next_wait, policy):
                                self.events.retry(kind)
                            raise
            except TrainerError as exc:
                if attempt_number > 1:
                    exc.args = (f"{exc.args[0]} (after {attempt_number} attempts)",)
                raise
            raise AssertionError("unreachable: stamina returns or raises")  # pragma: no cover
        raise TrainerTransportError(
            f"{_where(url)} did not succeed within {policy.timeout:g} s (its retry budget)"
        )

    async def _attempt(
        self,
        url: str,
        content: Content,
        headers: list[tuple[bytes, bytes]],
        policy: RetryPolicy,
        *,
        kind: str,
        read: bool,
    ) -> bytes:
        """One attempt, counted in :attr:`events`. Maps *every* failure to a
        :class:`~rollout.errors.TrainerError`: what httpx calls a transport error is
        retried, anything else is not."""
        self.events.attempt(kind)
        timeouts = same_timeouts(policy.request_timeout)
        failure: TrainerError
        try:
            response = await self._send(b"POST", parsed_url(url), headers, content, timeouts)
            try:
                return await self._answer(response, url, read=read)
            finally:
                await response.aclose()
        except TrainerError as exc:
            failure = exc
        except httpx.TimeoutException as exc:
            failure = TrainerTransportError(f"{_where(url)} timed out ({type(exc).__name__})")
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            failure = TrainerExchangeError(
                f"{_where(url)} could not be sent: {_scrub(exc, headers)}"
            )
        except httpx.TransportError as exc:
            failure = TrainerTransportError(
                f"{_where(url)} failed: {type(exc).__name__}: {_scrub(exc, headers)}"
            )
        except Exception as exc:  # decoding, invalid URL, anything else: never escapes
            failure = TrainerExchangeError(
                f"{_where(url)} failed: {type(exc).__name__}: {_scrub(exc, headers)}"
            )
        self.events.failure(kind, type(failure).__name__)
        raise failure

    async def _answer(self, response: httpx.Response, url: str, *, read: bool) -> bytes:
        """The body of a 2xx (``b""`` unless ``read``), or :class:`TrainerHTTPError`."""
        if not response.is_success:
            raise TrainerHTTPError(
                f"{_where(url)} answered HTTP {response.status_code}",
                status=response.status_code,
                retry_after=retry_after(response),
                body=_excerpt(await self._excerpt_of(response)),
            )
        if not read:  # an acknowledgement: its body does not matter
            with contextlib.suppress(httpx.HTTPError):
                await self._read(response, _DISCARD_BYTES, url)
            return b""
        return await self._read(response, self.max_response_bytes, url)

    async def _read(self, response: httpx.Response, limit: int, url: str) -> bytes:
        """The decoded body, or :class:`~rollout.errors.TrainerExchangeError` past ``limit``
        bytes, compressed or not (stops reading there: the rest never reaches memory)."""
        declared = response.headers.get("content-length", "")
        if (
            declared.isdigit()
            and int(declared) > limit
            and "content-encoding" not in response.headers
        ):
            raise TrainerExchangeError(
                f"{_where(url)} answered {int(declared)} bytes; the limit is {limit} bytes"
            )
        try:
            return await read_decoded(response, limit)
        except TooLarge:
            raise TrainerExchangeError(
                f"{_where(url)} answered more than {limit} bytes (the limit); not read further"
            ) from None

    async def _excerpt_of(self, response: httpx.Response) -> bytes:
        """The start of an error answer, for :attr:`~rollout.errors.TrainerError.body`."""
        try:
            return await read_decoded(response, _BODY_EXCERPT_CHARS * 4, truncate=True)
        except httpx.HTTPError:
            return b""


def _basic(username: str, password: str) -> bytes:
    """The ``Authorization`` value for credentials in a trainer URL's user info."""
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def _where(url: str) -> str:
    """How errors name a request: its method and redacted URL."""
    return f"POST {redact_url(url)}"


def _scrub(exc: BaseException, headers: list[tuple[bytes, bytes]]) -> str:
    """``exc``'s message without the Authorization header's value (nor, for Basic, the
    password it encodes), in one line."""
    text = " ".join(str(exc).split())
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode().partition(" ")
            text = text.replace(f"{scheme} {secret}", f"{scheme} ***").replace(secret, "***")
            if scheme == "Basic" and (password := _basic_password(secret)):
                text = text.replace(password, "***")
    return text[:500]


def _basic_password(token: str) -> str:
    return base64.b64decode(token).decode().partition(":")[2]

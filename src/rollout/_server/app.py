"""The HTTP side: a Quart-Trio app with thin routes (docs/PROTOCOL.md §2, §3 and §6).

``POST /v1/rollout/init``: authenticate (before reading the body), check the content type,
read at most ``max_body_bytes``, parse, admit, answer ``202``. ``POST /rollout`` (seed
000's synchronous variant): the same checks, then run the rollout and answer its result.
``GET /health``: counters, unauthenticated. Every error is a JSON body ``{"detail": ...}``
with a 4xx status; a bug is a ``500`` with a generic message and the traceback in the log,
never in the response.

The app owns the rollout :class:`~rollout.supervisor.Supervisor` and the one shared
transport to trainers (:func:`~rollout._trainer.transport.policed_transport`). Order matters
at shutdown (docs/ARCHITECTURE.md, "Shutdown"):
Quart-Trio cancels its background nursery ``BACKGROUND_TASK_SHUTDOWN_TIMEOUT`` seconds after
shutdown starts, then runs ``after_serving``; so that timeout is set to the whole drain
budget, ``after_serving`` drains the supervisor first, and only then closes the transport.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .. import _json as _jsonlib
from .._store import Store, StoreError
from .._trainer.client import TrainerClient
from .._trainer.transport import policed_transport
from .._version import version
from .._wire import codec
from .._wire.models import InitRequest
from .._wire.sync import parse_sync_request
from .._wire.validation import ValidationError, parse_init_request
from ..agent import Agent
from ..config import ServerConfig
from .admission import AdmissionError, Draining
from .lifecycle import encode_result
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .openapi import DOCS_HTML, openapi
from .status import cancel, describe
from .supervisor import Supervisor

__all__ = ["create_app", "supervisor_of"]

log = logging.getLogger("rollout.app")

_SUPERVISOR = "rollout.supervisor"
#: Init bodies larger than this (bytes) are decoded and validated in a worker thread.
_PARSE_IN_THREAD_BYTES = 256 * 1024


def supervisor_of(app: QuartTrio) -> Supervisor:
    """The running app's supervisor. Raises :class:`LookupError` before startup."""
    try:
        return app.extensions[_SUPERVISOR]  # type: ignore[no-any-return]
    except KeyError:
        raise LookupError("the app has not started serving yet") from None


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        _jsonlib.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return _json({"detail": detail}, status, headers)


def _refused_early(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """An answer sent before the request body was read: the connection is closed after it,
    so an unread body can never be taken for the next request on it (keep-alive)."""
    return _error(status, detail, {**(headers or {}), "connection": "close"})


def _bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; the scheme is matched
    case-insensitively (RFC 7235 §2.1)."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def create_app(
    agent: Agent,
    config: ServerConfig | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    store: Store | None = None,
) -> QuartTrio:
    """Build the rollout server app for ``agent``.

    ``transport`` replaces the transport trainer calls go through (for embedding; tests use
    real sockets); ``store`` replaces the one ``config.store`` names (several apps in one
    process may share a memory store). The app must be served under its ASGI lifespan
    (Hypercorn does this; in tests, ``async with app.test_app()``).
    """
    config = config or ServerConfig()
    app = QuartTrio("rollout")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = config.shutdown_budget
    expected_key = None if config.api_key is None else config.api_key.encode()

    def live_supervisor() -> Supervisor | None:
        return app.extensions.get(_SUPERVISOR)

    metrics = ServerMetrics(
        lambda: s.admission.tally if (s := live_supervisor()) else None,
        lambda: s.delivery.lost_results if (s := live_supervisor()) else 0,
        lambda: s.leases.taken_over if (s := live_supervisor()) else 0,
    )
    policy = config.trainer_policy

    @app.before_serving
    async def start() -> None:
        trainer = TrainerClient(
            transport or policed_transport(policy, config.max_connections),
            chat=config.chat_retry,
            delivery=config.delivery_retry,
            max_response_bytes=config.max_response_bytes,
            events=metrics,
        )
        supervisor = Supervisor(agent, trainer, config, metrics=metrics, store=store)
        await app.nursery.start(supervisor.run)
        app.extensions[_SUPERVISOR] = supervisor

    @app.after_serving
    async def stop() -> None:
        supervisor = supervisor_of(app)
        await supervisor.drain()
        await supervisor.trainer.transport.aclose()

    def unauthorized() -> Response | None:
        """The ``401`` when the server has an inbound key and the request lacks it."""
        if expected_key is None:
            return None
        token = _bearer_token(request.headers.get("authorization", ""))
        given = token.encode("utf-8", "replace") if token is not None else b""
        if hmac.compare_digest(given, expected_key):
            return None
        return _refused_early(401, "Invalid or missing API key", {"www-authenticate": "Bearer"})

    async def read_init(
        parse: Callable[[Any], InitRequest],
    ) -> tuple[InitRequest | None, int, Response | None]:
        """Authenticate (before reading the body), check the content type, decode strict
        JSON and validate it with ``parse`` (docs/PROTOCOL.md §2.3 and §2.5). Returns the
        init, the body's size in bytes, and the error answer if any.

        A body over ``_PARSE_IN_THREAD_BYTES`` is decoded and validated in a worker thread,
        so a large init does not stall every other request on the event loop."""
        if supervisor_of(app).failed.is_set():
            return None, 0, _refused_early(503, "the rollout engine stopped; shutting down")
        if (refusal := unauthorized()) is not None:
            return None, 0, refusal
        mimetype = request.mimetype
        if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
            return None, 0, _refused_early(415, "expected Content-Type application/json")
        raw = await request.get_data(cache=False)

        def decode() -> InitRequest:
            return parse(_jsonlib.loads(raw))

        try:
            if len(raw) > _PARSE_IN_THREAD_BYTES:
                parsed = await trio.to_thread.run_sync(decode)
            else:
                parsed = decode()
        except _jsonlib.JSONError as exc:
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"JSON decode error: {exc}"}]
            return None, len(raw), _error(422, detail)
        except ValidationError as exc:
            return None, len(raw), _error(422, exc.detail)
        if (refusal := trainer_refused(parsed)) is not None:
            return None, len(raw), refusal
        return parsed, len(raw), None

    def trainer_refused(init_request: InitRequest) -> Response | None:
        url = httpx.URL(init_request.server_url)
        refusal = policy.refusal(url.host, url.port or (443 if url.scheme == "https" else 80))
        if refusal is None:
            return None
        detail = [{"type": "trainer_not_allowed", "loc": ["body", "server_url"], "msg": refusal}]
        return _error(422, detail)

    def store_unavailable(exc: StoreError) -> Response:
        log.error("store: %s", exc)
        return _error(503, "the rollout store is unavailable; retry later", {"retry-after": "2"})

    def refused(exc: AdmissionError) -> Response:
        headers = {} if exc.retry_after is None else {"retry-after": f"{exc.retry_after:g}"}
        if isinstance(exc, Draining):  # the retry goes on a new connection: another worker
            headers["connection"] = "close"
        return _error(exc.status, str(exc), headers)

    @app.post("/v1/rollout/init")
    async def init() -> Response:
        init_request, size, error = await read_init(parse_init_request)
        if init_request is None:
            assert error is not None
            metrics.inits.labels(str(error.status_code)).inc()
            return error
        supervisor = supervisor_of(app)
        try:
            response, started = await supervisor.admit(init_request, size)
        except AdmissionError as exc:
            metrics.inits.labels(str(exc.status)).inc()
            return refused(exc)
        metrics.inits.labels("started" if started else "duplicate").inc()
        if started:
            log.info("rollout %s accepted", init_request.rollout_id)
        else:
            log.info(
                "rollout %s: duplicate init, answered from the record", init_request.rollout_id
            )
        return _json(codec.unstructure(response), 202)

    @app.post("/rollout")
    async def rollout_sync() -> Response:
        """The synchronous variant: run the rollout, answer its result (``200``)."""
        sync_request, size, error = await read_init(parse_sync_request)
        if sync_request is None:
            assert error is not None
            return error
        try:
            result = await supervisor_of(app).run_sync(sync_request, size)
        except AdmissionError as exc:
            return refused(exc)
        return Response(encode_result(result), status=200, content_type="application/json")

    @app.get("/v1/rollout/<path:rollout_id>")
    async def rollout_status(rollout_id: str) -> Response:
        """Where a rollout is (docs/PROTOCOL.md §3): phase, turns, tokens, its result."""
        if rollout_id in ("init", "cancel"):  # POST endpoints, not rollout ids
            return _error(405, "Method Not Allowed", {"allow": "POST"})
        if (refusal := unauthorized()) is not None:
            return refusal
        try:
            status = await describe(supervisor_of(app), rollout_id)
        except StoreError as exc:
            return store_unavailable(exc)
        if status is None:
            return _error(404, "no rollout with this rollout_id here")
        return _json(status, 200)

    @app.post("/v1/rollout/<path:rollout_id>/cancel")
    async def cancel_one(rollout_id: str) -> Response:
        """Cancel one rollout; its result is ERROR "cancelled" (docs/PROTOCOL.md §3)."""
        if (refusal := unauthorized()) is not None:
            return refusal
        supervisor = supervisor_of(app)
        try:
            if await describe(supervisor, rollout_id) is None:
                return _error(404, "no rollout with this rollout_id here")
            cancelled = await cancel(supervisor, rollout_ids=[rollout_id])
        except StoreError as exc:
            return store_unavailable(exc)
        return _json({"rollout_id": rollout_id, "cancelled": bool(cancelled)}, 200)

    @app.post("/v1/rollout/cancel")
    async def cancel_many() -> Response:
        """Cancel by ``{"rollout_ids": [...]}``, ``{"prefix": "..."}`` or ``{"all": true}``."""
        if (refusal := unauthorized()) is not None:
            return refusal
        try:
            body = _jsonlib.loads(await request.get_data(cache=False))
        except _jsonlib.JSONError as exc:
            return _error(422, f"JSON decode error: {exc}")
        selector = _cancel_selector(body)
        if isinstance(selector, str):
            return _error(422, selector)
        try:
            cancelled = await cancel(supervisor_of(app), **selector)
        except StoreError as exc:
            return store_unavailable(exc)
        return _json({"cancelled": cancelled}, 200)

    @app.get("/metrics")
    async def metrics_text() -> Response:
        """Prometheus text format (:mod:`rollout._server.metrics`), unauthenticated."""
        return Response(metrics.render(), status=200, content_type=METRICS_CONTENT_TYPE)

    spec = openapi(agent.name, version())

    @app.get("/openapi.json")
    async def openapi_json() -> Response:
        """The OpenAPI 3.1 document, generated from the wire models."""
        return _json(spec, 200)

    @app.get("/docs")
    async def docs() -> Response:
        """A page that renders ``/openapi.json`` (no external asset)."""
        return Response(DOCS_HTML, status=200, content_type="text/html; charset=utf-8")

    @app.get("/health")
    async def health() -> Response:
        """``200`` while the engine runs (also while draining), ``503`` once it failed."""
        supervisor = supervisor_of(app)
        return _json(supervisor.health(), 503 if supervisor.failed.is_set() else 200)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:  # refused before the body was read
            return _refused_early(413, exc.description or exc.name)
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")

    return app


def _cancel_selector(body: Any) -> dict[str, Any] | str:
    """The keyword arguments of :meth:`Supervisor.cancel` from a cancel body, or why the
    body names nothing to cancel."""
    if isinstance(body, dict):
        ids, prefix, everything = body.get("rollout_ids"), body.get("prefix"), body.get("all")
        if isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids):
            return {"rollout_ids": ids}
        if isinstance(prefix, str) and prefix:
            return {"prefix": prefix}
        if everything is True:
            return {"all": True}
    return 'expected {"rollout_ids": [...]}, {"prefix": "..."} or {"all": true}'

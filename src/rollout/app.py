"""The HTTP side: a Quart-Trio app with thin routes (PROTOCOL.md §1).

``POST /v1/rollout/init``: authenticate (before reading the body), check the content type,
read at most ``max_body_bytes``, parse, admit, answer ``202``. ``POST /rollout`` (seed
000's synchronous variant): the same checks, then run the rollout and answer its result.
``GET /health``: counters, unauthenticated. Every error is a JSON body ``{"detail": ...}``
with a 4xx status; a bug is a ``500`` with a generic message and the traceback in the log,
never in the response.

The app owns the rollout :class:`~rollout.supervisor.Supervisor` and the one shared
:class:`httpx.AsyncClient`. Order matters at shutdown (STACK.md): Quart-Trio cancels its
background nursery ``BACKGROUND_TASK_SHUTDOWN_TIMEOUT`` seconds after shutdown starts, then
runs ``after_serving``; so that timeout is set to the whole drain budget, ``after_serving``
drains the supervisor first, and only then closes the HTTP client.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import httpx
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .agent import Agent
from .config import ServerConfig
from .protocol import ValidationError, converter, parse_init_request, parse_sync_request
from .supervisor import AdmissionError, Supervisor
from .trainer import TrainerClient

__all__ = ["create_app", "supervisor_of"]

log = logging.getLogger("rollout.app")

_SUPERVISOR = "rollout.supervisor"


def supervisor_of(app: QuartTrio) -> Supervisor:
    """The running app's supervisor. Raises :class:`LookupError` before startup."""
    try:
        return app.extensions[_SUPERVISOR]  # type: ignore[no-any-return]
    except KeyError:
        raise LookupError("the app has not started serving yet") from None


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    return _json({"detail": detail}, status, headers)


def create_app(
    agent: Agent,
    config: ServerConfig | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> QuartTrio:
    """Build the rollout server app for ``agent``.

    ``transport`` replaces the HTTP client's network transport (for embedding; tests use
    real sockets). The app must be served under its ASGI lifespan (Hypercorn does this;
    in tests, ``async with app.test_app()``).
    """
    config = config or ServerConfig()
    app = QuartTrio("rollout")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = config.shutdown_budget
    expected_auth = None if config.api_key is None else f"Bearer {config.api_key}".encode()

    @app.before_serving
    async def start() -> None:
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_keepalive_connections,
        )
        http = httpx.AsyncClient(limits=limits, transport=transport, follow_redirects=False)
        trainer = TrainerClient(http, chat=config.chat_retry, delivery=config.delivery_retry)
        supervisor = Supervisor(agent, trainer, config)
        await app.nursery.start(supervisor.run)
        app.extensions[_SUPERVISOR] = supervisor

    @app.after_serving
    async def stop() -> None:
        supervisor = supervisor_of(app)
        await supervisor.drain()
        await supervisor.trainer.http.aclose()

    async def read_body() -> tuple[Any, Response | None]:
        """Authenticate (before reading the body), check the content type, decode JSON."""
        if expected_auth is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected_auth):
                return None, _error(
                    401, "Invalid or missing API key", {"www-authenticate": "Bearer"}
                )
        mimetype = request.mimetype
        if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
            return None, _error(415, f"expected Content-Type application/json, got {mimetype}")
        raw = await request.get_data(cache=False)
        try:
            return json.loads(raw), None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"JSON decode error: {exc}"}]
            return None, _error(422, detail)

    def refused(exc: AdmissionError) -> Response:
        headers = {} if exc.retry_after is None else {"retry-after": f"{exc.retry_after:g}"}
        return _error(exc.status, str(exc), headers)

    @app.post("/v1/rollout/init")
    async def init() -> Response:
        payload, error = await read_body()
        if error is not None:
            return error
        try:
            init_request = parse_init_request(payload)
        except ValidationError as exc:
            return _error(422, exc.detail)
        supervisor = supervisor_of(app)
        try:
            response, started = supervisor.admit(init_request)
        except AdmissionError as exc:
            return refused(exc)
        if started:
            log.info("rollout %s accepted", init_request.rollout_id)
        else:
            log.info(
                "rollout %s: duplicate init, answered from the record", init_request.rollout_id
            )
        return _json(converter.unstructure(response), 202)

    @app.post("/rollout")
    async def rollout_sync() -> Response:
        """Seed 000's synchronous variant: run the rollout, answer its result (``200``)."""
        payload, error = await read_body()
        if error is not None:
            return error
        try:
            sync_request = parse_sync_request(payload)
        except ValidationError as exc:
            return _error(422, exc.detail)
        try:
            result = await supervisor_of(app).run_sync(sync_request)
        except AdmissionError as exc:
            return refused(exc)
        return _json(result.to_json(), 200)

    @app.get("/health")
    async def health() -> Response:
        return _json(supervisor_of(app).health(), 200)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(500, "internal server error")

    return app

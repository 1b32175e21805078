"""``GET /openapi.json`` (OpenAPI 3.1, generated from the wire models) and ``GET /docs``.

The schemas come from the attrs classes of :mod:`rollout._wire.models` (field names, types,
defaults), with the wire shape of the two classes the codec writes differently (a tool call
nests ``function``; a message's unknown keys are kept). The paths are the endpoints of
docs/PROTOCOL.md §2, §3 and §6 with their status codes. ``/docs`` is one self-contained
page (no CDN, no external asset) that renders the spec.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any, get_args, get_origin

import attrs

from .._wire import models
from .._wire.models import (
    CompletionParams,
    InitRequest,
    InitResponse,
    Message,
    Metrics,
    RolloutResult,
)

__all__ = ["DOCS_HTML", "openapi"]

_SCHEMA_REF = "#/components/schemas/"
_WIRE_CLASSES: tuple[type, ...] = (
    InitRequest,
    InitResponse,
    CompletionParams,
    RolloutResult,
    Metrics,
)


def _type_schema(annotation: Any) -> dict[str, Any]:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return {"type": "null"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in args]}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0])}
    if annotation is models.JSONObject or origin in (Mapping, dict) or annotation is Mapping:
        return {"type": "object"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"type": "string", "enum": [member.value for member in annotation]}
    if annotation is Message:
        return {"$ref": _SCHEMA_REF + "Message"}
    if attrs.has(annotation):
        return {"$ref": _SCHEMA_REF + annotation.__name__}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in simple:
        return {"type": simple[annotation]}
    return {}


def _class_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, vars(models))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if field.name == "extra":
            continue
        schema = _type_schema(hints[field.name])
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif _jsonable(field.default):  # a factory (a Factory instance) is left out
            schema = {**schema, "default": _default(field.default)}
        properties[field.name] = schema
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        body["required"] = required
    if cls.__doc__:
        body["description"] = " ".join(cls.__doc__.split("\n\n")[0].split())
    return body


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | enum.Enum | tuple)


def _default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def _components() -> dict[str, Any]:
    schemas = {cls.__name__: _class_schema(cls) for cls in _WIRE_CLASSES}
    schemas["InitRequest"]["properties"]["completion_params"] = {
        "$ref": _SCHEMA_REF + "CompletionParams",
        "description": "Sampling params; every other key is passed through (§4.1).",
    }
    schemas["CompletionParams"]["additionalProperties"] = True
    schemas["Message"] = {
        "type": "object",
        "description": "A chat message in the OpenAI format; unknown keys are kept (§7.1).",
        "properties": {
            "role": {"type": "string", "enum": sorted(models.ROLES)},
            "content": {"anyOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
            "tool_calls": {"type": "array", "items": {"$ref": _SCHEMA_REF + "ToolCall"}},
            "tool_call_id": {"type": "string"},
            "name": {"type": "string"},
        },
        "required": ["role"],
        "additionalProperties": True,
    }
    schemas["ToolCall"] = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "type": {"type": "string", "default": "function"},
            "function": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}},
                "required": ["name", "arguments"],
            },
        },
        "required": ["id", "function"],
    }
    schemas["Error"] = {
        "type": "object",
        "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
        "required": ["detail"],
    }
    schemas["RolloutStatus"] = {
        "type": "object",
        "properties": {
            "rollout_id": {"type": "string"},
            "phase": {
                "type": "string",
                "enum": ["queued", "running", "delivering", "done", "lost"],
            },
            "owner": {"type": "string"},
            "turns": {"type": "integer"},
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "created_at": {"type": "number", "description": "Unix time of the 202, seconds"},
            "seconds": {"type": "number"},
            "cancelled": {"type": "boolean"},
            "result": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        },
    }
    schemas["Health"] = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["healthy", "draining", "failed"]},
            "agent_loop": {"type": "string"},
            **{
                key: {"type": "integer"}
                for key in (
                    "active_rollouts",
                    "completed_rollouts",
                    "queued_rollouts",
                    "running_rollouts",
                    "delivering_results",
                    "lost_results",
                    "internal_errors",
                    "abandoned_threads",
                    "taken_over",
                    "superseded_results",
                )
            },
            "draining": {"type": "boolean"},
            "worker": {"type": "string", "description": "host:pid/nonce of this worker"},
            "store": {"type": "string", "description": "the store's kind and place"},
        },
    }
    return {"schemas": schemas}


_ROLLOUT_ID = {"name": "rollout_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _SCHEMA_REF + ref}}}


def _errors(*codes: int) -> dict[str, Any]:
    why = {
        401: "Missing or wrong inbound API key (checked before the body is read)",
        409: "The rollout_id or idempotency_key is used by a different init",
        413: "Body larger than the limit",
        415: "Not a JSON content type",
        422: "Not strict JSON, or not a valid init",
        429: "A bound is reached; retry after Retry-After",
        503: "Draining for shutdown, or the engine failed",
    }
    return {str(c): {"description": why[c], "content": _json("Error")} for c in codes}


def openapi(title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server (``title``: the agent's name)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"rollout server: {title}",
            "version": version,
            "description": "The Remote Rollout Protocol (docs/PROTOCOL.md in the repository).",
        },
        "paths": {
            "/v1/rollout/init": {
                "post": {
                    "summary": "Accept a rollout (§2); its result is posted to server_url",
                    "operationId": "initRollout",
                    "requestBody": {"required": True, "content": _json("InitRequest")},
                    "responses": {
                        "202": {"description": "Accepted", "content": _json("InitResponse")},
                        **_errors(401, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/rollout": {
                "post": {
                    "summary": "The synchronous variant (§6): run and answer the result",
                    "operationId": "runRolloutSync",
                    "requestBody": {"required": True, "content": {"application/json": {}}},
                    "responses": {
                        "200": {"description": "The result", "content": _json("RolloutResult")},
                        **_errors(401, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/rollout/{rollout_id}": {
                "get": {
                    "summary": "Where a rollout is: phase, turns, tokens, its result (§3.1)",
                    "operationId": "rolloutStatus",
                    "parameters": [_ROLLOUT_ID],
                    "responses": {
                        "200": {"description": "Known here", "content": _json("RolloutStatus")},
                        "404": {"description": "Unknown here", "content": _json("Error")},
                        **_errors(401),
                    },
                }
            },
            "/v1/rollout/{rollout_id}/cancel": {
                "post": {
                    "summary": "Cancel one rollout; its result is ERROR 'cancelled' (§3.1)",
                    "operationId": "cancelRollout",
                    "parameters": [_ROLLOUT_ID],
                    "responses": {
                        "200": {"description": "Whether it was stopped"},
                        "404": {"description": "Unknown here", "content": _json("Error")},
                        **_errors(401),
                    },
                }
            },
            "/v1/rollout/cancel": {
                "post": {
                    "summary": "Cancel by rollout_ids, prefix or all (§3.1)",
                    "operationId": "cancelRollouts",
                    "requestBody": {"required": True, "content": {"application/json": {}}},
                    "responses": {
                        "200": {"description": "The rollouts stopped"},
                        **_errors(401, 422),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Counters and status (§3)",
                    "operationId": "health",
                    "responses": {
                        "200": {"description": "Running", "content": _json("Health")},
                        "503": {"description": "The engine failed", "content": _json("Health")},
                    },
                }
            },
        },
        "components": _components(),
    }


#: The ``/docs`` page: renders ``/openapi.json`` with a few lines of inline script.
DOCS_HTML = resources.files("rollout._server").joinpath("docs.html").read_text()

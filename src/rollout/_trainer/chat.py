"""The chat-completions exchange in the trainer's format: the request body the server sends
and the completion it reads back (docs/PROTOCOL.md §4).

Pure functions and the small models of an answer; :mod:`rollout._trainer.client` sends the
body and hands the decoded answer here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attrs import frozen

from .._json import JSON, thaw_object
from .._wire.models import CompletionParams, Message
from .._wire.validation import ValidationError, _detail, structure_or_raise

__all__ = ["TRAINER_ONLY", "Completion", "Usage", "chat_request", "openai_body", "parse_completion"]

#: Keys of the chat body that only a trainer gets: an OpenAI-compatible server refuses
#: unknown arguments (``rollout_id``) or charges for them (``logprobs``).
TRAINER_ONLY = frozenset({"rollout_id", "logprobs"})


@frozen
class Usage:
    """``usage`` of a chat completion, in tokens. Missing counts are 0."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@frozen
class Completion:
    """What the server reads from a chat completion: the first choice and the usage."""

    message: Message
    finish_reason: str | None
    usage: Usage


@frozen
class _Choice:
    message: Message
    finish_reason: str | None = None


@frozen
class _CompletionBody:
    choices: tuple[_Choice, ...]
    usage: Usage | None = None


def chat_request(
    rollout_id: str,
    messages: Sequence[Mapping[str, JSON]],
    params: CompletionParams,
    tools: Sequence[Mapping[str, JSON]],
) -> dict[str, JSON]:
    """The JSON body of ``POST {server_url}/v1/chat/completions`` (docs/PROTOCOL.md §4.1).

    ``messages`` is the history already as wire JSON (:func:`rollout._wire.codec.unstructure`
    of each message, done once per message by the caller: the history only grows).
    Keys as the reference sends them (``tests/fixtures/03_chat_request_turn1.json``): ``model``
    ("default"), the full ``messages`` history, ``rollout_id``, ``temperature``, ``top_p``,
    ``max_tokens``, ``stop`` (omitted when none) and ``logprobs``; then every other sampling
    key unchanged, then the agent's ``tools`` (omitted when it has none). A ``model`` key in
    ``completion_params`` replaces "default".
    """
    body: dict[str, JSON] = {
        "model": "default",
        "messages": list(messages),
        "rollout_id": rollout_id,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.stop is not None:
        body["stop"] = list(params.stop)
    body["logprobs"] = params.logprobs
    body.update(thaw_object(params.extra))
    if tools:
        body["tools"] = list(tools)  # frozen parts are encoded in place (rollout._json.dumps)
    return body


def openai_body(body: Mapping[str, JSON], model: str) -> dict[str, JSON]:
    """``body`` (from :func:`chat_request`) for an OpenAI-compatible server (vLLM, SGLang,
    Ollama, OpenAI): the trainer-only keys removed and ``model`` set."""
    return {**{k: v for k, v in body.items() if k not in TRAINER_ONLY}, "model": model}


def parse_completion(payload: JSON) -> Completion:
    """Read a chat completion answer (docs/PROTOCOL.md §4.2).

    Raises :class:`ValidationError` when it has no ``choices[0].message`` with role
    ``assistant``, when a tool call lacks its ``id`` or ``function.name``, or when two tool
    calls share an id (they could not each be answered exactly once, §3 rule 2).
    Token data (``token_ids``, ``logprobs``) is not read: it stays on the trainer side.
    """
    body = structure_or_raise(payload, _CompletionBody, root="completion")
    if not body.choices:
        raise ValidationError(
            [_detail(["completion", "choices"], "must not be empty", "too_short")]
        )
    choice = body.choices[0]
    message = choice.message
    if message.role != "assistant":
        raise ValidationError(
            [
                _detail(
                    ["completion", "choices", 0, "message", "role"],
                    f"must be 'assistant', got {message.role!r}",
                )
            ]
        )
    ids = [call.id for call in message.tool_calls or ()]
    if len(set(ids)) != len(ids):
        raise ValidationError(
            [
                _detail(
                    ["completion", "choices", 0, "message", "tool_calls"],
                    "tool call ids must be unique",
                )
            ]
        )
    return Completion(message, choice.finish_reason, body.usage or Usage())

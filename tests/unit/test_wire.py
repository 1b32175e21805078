"""Wire models against the golden examples (docs/PROTOCOL.md §2, §4 and §5), strict types,
422 details, and a round-trip property for chat messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import fixture_json
from rollout import CompletionParams, FinishReason, Message, Metrics, RolloutResult, Status
from rollout._trainer.chat import chat_request, parse_completion
from rollout._wire import codec
from rollout._wire.validation import ValidationError, parse_init_request


def _detail(body: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        parse_init_request(body)
    return caught.value.detail


def test_the_captured_init_request_parses() -> None:
    body = fixture_json("01_init_request.json")
    request = parse_init_request(body)

    assert request.rollout_id == body["rollout_id"]
    assert request.server_url == body["server_url"].rstrip("/")
    assert [codec.unstructure(m) for m in request.messages] == [
        {"content": m.get("content"), **m} for m in body["messages"]
    ]
    assert request.max_turns == body.get("max_turns", 10)
    assert request.key == (body.get("idempotency_key") or body["rollout_id"])


def test_the_captured_completions_parse_with_their_tool_calls() -> None:
    with_call = parse_completion(fixture_json("04_chat_response_tool_call.json"))
    final = parse_completion(fixture_json("06_chat_response_final.json"))

    assert with_call.message.role == "assistant"
    assert with_call.message.tool_calls
    call = with_call.message.tool_calls[0]
    raw = fixture_json("04_chat_response_tool_call.json")["choices"][0]["message"]
    assert call.id == raw["tool_calls"][0]["id"]
    assert json.loads(call.arguments) == json.loads(raw["tool_calls"][0]["function"]["arguments"])
    assert with_call.usage.completion_tokens > 0
    assert not final.message.tool_calls
    assert final.message.text


def test_the_captured_turn_two_request_is_rebuilt_key_for_key() -> None:
    """Messages of tests/fixtures/05_chat_request_turn2.json go through the converter and come
    back unchanged, and the chat request built from the captured init has the keys the
    reference sends."""
    golden = fixture_json("05_chat_request_turn2.json")
    messages = [codec.structure(m, Message) for m in golden["messages"]]
    assert [codec.unstructure(m) for m in messages] == golden["messages"]

    init = parse_init_request(fixture_json("01_init_request.json"))
    wire = [codec.unstructure(m) for m in messages]
    body = chat_request(init.rollout_id, wire, init.completion_params, [])
    reference_keys = set(fixture_json("03_chat_request_turn1.json"))
    assert reference_keys <= set(body)
    assert body["messages"] == golden["messages"]


def test_a_result_has_the_keys_and_order_of_the_captured_callback() -> None:
    golden = fixture_json("07_completed_callback.json")
    result = RolloutResult(
        rollout_id="r",
        status=Status.COMPLETED,
        final_messages=(Message.user("hi"),),
        finish_reason=FinishReason.STOP,
        metrics=Metrics(),
        reward=1.0,
    )
    body = codec.result_json(result)

    assert list(body) == list(golden)
    metrics = body["metrics"]
    assert isinstance(metrics, dict)
    assert set(metrics) == set(golden["metrics"])


def test_unknown_fields_are_ignored() -> None:
    body = {**fixture_json("01_init_request.json"), "some_future_field": {"x": 1}}
    assert parse_init_request(body).rollout_id == body["rollout_id"]


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("max_turns", "3", ["body", "max_turns"]),
        ("max_turns", True, ["body", "max_turns"]),
        ("max_turns", 0, ["body", "max_turns"]),
        ("max_turns", -1, ["body", "max_turns"]),
        ("rollout_id", 7, ["body", "rollout_id"]),
        ("rollout_id", "   ", ["body", "rollout_id"]),
        ("server_url", "ftp://example.com", ["body", "server_url"]),
        ("messages", [], ["body", "messages"]),
        ("metadata", "x", ["body", "metadata"]),
    ],
)
def test_type_and_value_errors_point_at_the_field(field: str, value: Any, loc: list[Any]) -> None:
    body = {**fixture_json("01_init_request.json"), field: value}
    detail = _detail(body)

    assert [d["loc"] for d in detail] == [loc]
    assert all(isinstance(d["msg"], str) and d["msg"] for d in detail)
    assert all(isinstance(d["type"], str) and d["type"] for d in detail)


def test_a_bad_message_is_located_by_index() -> None:
    body = fixture_json("01_init_request.json")
    body["messages"] = [*body["messages"], {"role": 5, "content": "x"}]
    (detail,) = _detail(body)
    assert detail["loc"][:3] == ["body", "messages", len(body["messages"]) - 1]


def test_missing_required_fields_are_all_listed() -> None:
    detail = _detail({"messages": [{"role": "user", "content": "hi"}]})
    assert sorted(tuple(d["loc"]) for d in detail) == [
        ("body", "rollout_id"),
        ("body", "server_url"),
    ]


def test_a_non_object_body_is_one_error() -> None:
    assert _detail([1, 2]) == [
        {"loc": ["body"], "msg": "expected a JSON object, got an array", "type": "dict_type"}
    ]


def test_completion_params_keep_every_unknown_key_for_the_chat_request() -> None:
    body = {
        **fixture_json("01_init_request.json"),
        "completion_params": {"temperature": 0.2, "stop": "END", "seed": 7, "top_k": {"a": [1]}},
    }
    params = parse_init_request(body).completion_params
    request = chat_request("r", [codec.unstructure(Message.user("q"))], params, [])

    assert params == CompletionParams(
        temperature=0.2, stop=("END",), extra={"seed": 7, "top_k": {"a": [1]}}
    )
    assert request["stop"] == ["END"]
    assert (request["seed"], request["top_k"]) == (7, {"a": [1]})
    assert (request["top_p"], request["max_tokens"], request["logprobs"]) == (1.0, 512, True)


def test_a_completion_without_an_assistant_message_is_invalid() -> None:
    payloads: list[Any] = [
        {"choices": []},
        {"choices": [{"message": {"role": "user", "content": "x"}}]},
        {"nothing": True},
    ]
    for payload in payloads:
        with pytest.raises(ValidationError):
            parse_completion(payload)


def test_duplicate_tool_call_ids_in_one_completion_are_invalid() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
    payload: Any = {
        "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call, call]}}]
    }
    with pytest.raises(ValidationError, match="unique"):
        parse_completion(payload)


def test_api_key_is_not_in_repr() -> None:
    body = {**fixture_json("01_init_request.json"), "api_key": "sk-very-secret"}
    assert "sk-very-secret" not in repr(parse_init_request(body))


# -- property: messages round-trip ----------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.text()
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_tool_call: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.text(min_size=1, max_size=20), "arguments": st.text()}
        ),
    }
)
_messages: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": st.text()}),
    st.fixed_dictionaries(
        {"role": st.just("assistant"), "content": st.none() | st.text()},
        optional={
            "tool_calls": st.lists(
                _tool_call, min_size=1, max_size=3, unique_by=lambda c: str(c["id"])
            )
        },
    ),
    st.fixed_dictionaries(
        {"role": st.just("tool"), "content": st.text(), "tool_call_id": st.text(min_size=1)}
    ),
    # Keys we do not model travel back unchanged.
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(), "x_vendor": _json}),
)


@given(_messages)
def test_a_message_round_trips_unchanged(message: dict[str, Any]) -> None:
    structured = codec.structure(message, Message)
    back = codec.unstructure(structured)

    assert back == message
    assert codec.structure(back, Message) == structured
    assert json.loads(json.dumps(back)) == message

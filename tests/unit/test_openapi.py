"""/openapi.json: a valid OpenAPI 3.1 document generated from the wire models, whose
schemas accept the protocol's golden examples; /docs renders it without external assets."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from conftest import fixture_json
from rollout import create_app
from rollout._server.openapi import DOCS_HTML, openapi
from rollout.examples.calculator import agent as calculator


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """A component schema with its $refs resolvable (for jsonschema)."""
    return {**spec["components"]["schemas"][name], "components": spec["components"]}


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = openapi("calculator", "1.2.3")
    validate(spec)  # raises on an invalid document
    assert spec["openapi"] == "3.1.0"
    assert set(spec["paths"]) == {
        "/v1/rollout/init",
        "/rollout",
        "/health",
        "/v1/rollout/{rollout_id}",
        "/v1/rollout/{rollout_id}/cancel",
        "/v1/rollout/cancel",
    }
    init = spec["paths"]["/v1/rollout/init"]["post"]["responses"]
    assert set(init) == {"202", "401", "409", "413", "415", "422", "429", "503"}


@pytest.mark.parametrize(
    ("fixture", "schema"),
    [
        ("01_init_request.json", "InitRequest"),
        ("02_init_response_202.json", "InitResponse"),
        ("07_completed_callback.json", "RolloutResult"),
    ],
)
def test_the_golden_examples_fit_the_generated_schemas(fixture: str, schema: str) -> None:
    spec = openapi("calculator", "1")
    jsonschema.Draft202012Validator(_schema(spec, schema)).validate(fixture_json(fixture))


def test_the_schemas_come_from_the_models() -> None:
    schemas = openapi("x", "1")["components"]["schemas"]
    init = schemas["InitRequest"]
    assert init["required"] == ["rollout_id", "server_url", "messages"]
    assert init["properties"]["max_turns"] == {"type": "integer", "default": 10}
    assert schemas["RolloutResult"]["properties"]["finish_reason"]["enum"] == [
        "stop",
        "length",
        "max_turns",
        "max_tokens",
        "timeout",
        "error",
        "shutdown",
        "cancelled",
    ]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema(openapi("x", "1"), "InitRequest")).validate(
            {"rollout_id": "r", "server_url": "http://t"}
        )


async def test_the_routes_serve_them() -> None:
    app = create_app(calculator)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        spec = await (await client.get("/openapi.json")).get_json()
        assert spec["info"]["title"] == "rollout server: calculator"
        page = await client.get("/docs")
        assert page.status_code == 200
        html = await page.get_data(as_text=True)
    assert html == DOCS_HTML
    assert "openapi.json" in html
    assert "http://" not in html
    assert "https://" not in html


async def test_the_health_schema_names_exactly_the_keys_health_answers() -> None:
    """The Health and RolloutStatus schemas are written beside the code that answers them:
    this keeps the two from drifting apart."""
    app = create_app(calculator)
    async with app.test_app() as test_app:
        health = await (await test_app.test_client().get("/health")).get_json()
    schemas = openapi("calculator", "1")["components"]["schemas"]
    assert set(schemas["Health"]["properties"]) == set(health)
    jsonschema.Draft202012Validator(_schema(openapi("x", "1"), "Health")).validate(health)

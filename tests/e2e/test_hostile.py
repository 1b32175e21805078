"""The promise against hostile input: no init, header or trainer answer breaks "exactly one
result", stops another rollout, or gets a 5xx (docs/PROTOCOL.md §2.5 and §7.6).

Each class of poison runs next to a healthy rollout in flight; the healthy one must get
exactly one result and the server must keep admitting.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
from poison_trainer import CHAT_POISONS, COMPLETED_POISONS, PoisonTrainer, serving_poison_trainer

from conftest import StartServer, Trainer, gated_agent, init_body, run_to_result
from rollout import Agent, Message, RolloutContext, Trajectory, tool

#: Init bodies (as raw JSON text, so that what json.dumps cannot write is sent too) that
#: must each be a 4xx on both POST endpoints. ``{url}`` is the trainer's URL.
HOSTILE_INITS: dict[str, str] = {
    "url with two ports": '"server_url": "http://127.0.0.1:80:80"',
    "url with a tab": '"server_url": "http://127.0.0.1\\t:80"',
    "url with a non-ASCII host": '"server_url": "http://tr\\u00e4iner.example"',
    "url with a space": '"server_url": "http://127.0.0.1 /x"',
    "url without a bracket": '"server_url": "http://[::1"',
    "url with port 0": '"server_url": "http://127.0.0.1:0"',
    "surrogate in rollout_id": '"rollout_id": "r-\\ud800"',
    "control character in rollout_id": '"rollout_id": "r-\\u0000"',
    "surrogate in api_key": '"api_key": "\\ud800"',
    "non-ASCII api_key": '"api_key": "cl\\u00e9"',
    "CRLF in api_key": '"api_key": "k\\r\\nX-Injected: 1"',
    "space in api_key": '"api_key": "two words"',
    "surrogate in a message": '"messages": [{"role": "user", "content": "\\udfff"}]',
    "NaN": '"completion_params": {"temperature": NaN}',
    "Infinity": '"metadata": {"x": Infinity}',
    "-Infinity": '"metadata": {"x": -Infinity}',
    "overflowing float": '"completion_params": {"temperature": 1e999}',
    "integer of 5000 digits": '"max_turns": ' + "9" * 5000,
    "integer of 30 digits": '"max_tokens_total": ' + "9" * 30,
    "duplicate keys": '"max_turns": 3, "max_turns": 4',
    "nested 1,000 deep": '"metadata": {"x": ' + "[" * 1000 + "]" * 1000 + "}",
    "nested 100,000 deep": '"metadata": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "link-local trainer": '"server_url": "http://169.254.169.254/latest"',
    "metadata trainer by IPv6": '"server_url": "http://[fd00:ec2::254]"',
    "unspecified address": '"server_url": "http://0.0.0.0:9000"',
}


def _raw_init(trainer_url: str, rollout_id: str, override: str, *, sync: bool = False) -> bytes:
    """A valid init as JSON text, with the field(s) of ``override`` (raw JSON text,
    ``"name": value``) in place of its own."""
    base = init_body(Trainer(None, trainer_url), rollout_id=rollout_id)  # type: ignore[arg-type]
    if sync:  # the synchronous variant's names for two fields
        base["sampling_params"] = base.pop("completion_params")
        override = override.replace('"api_key"', '"callback_api_key"')
        override = override.replace('"completion_params"', '"sampling_params"')
    base.pop(override.split('"')[1], None)
    return f"{json.dumps(base)[:-1]}, {override}}}".encode()


@pytest.mark.parametrize("path", ["/v1/rollout/init", "/rollout"])
async def test_hostile_inits_are_4xx_and_a_rollout_in_flight_is_unharmed(
    start_server: StartServer, trainer: Trainer, path: str
) -> None:
    release = trio.Event()
    server = await start_server(agent=gated_agent(release))
    healthy = init_body(trainer, rollout_id="healthy")
    assert (await server.init(healthy)).status_code == 202

    for name, override in HOSTILE_INITS.items():
        content = _raw_init(trainer.url, f"hostile-{len(name)}", override, sync=path == "/rollout")
        response = await server.client.post(
            server.url + path, content=content, headers={"content-type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert "Traceback" not in response.text
        assert "\\ud800" not in response.text
        assert "\\udfff" not in response.text

    assert (await server.health())["status"] == "healthy"
    release.set()
    result = await trainer.mock.wait_result("healthy", timeout=30.0)
    assert result["status"] == "COMPLETED"
    after = await run_to_result(server, trainer, init_body(trainer, rollout_id="after"))
    assert after["status"] == "COMPLETED"
    assert len(trainer.mock.results["healthy"]) == 1
    assert not any(rid.startswith("hostile") for rid in trainer.mock.results)


# ---------------------------------------------------------------- poisoned trainer answers


#: Poisons that end the rollout with ERROR (with this in error_message).
EXPECTED_ERRORS = {
    "broken-gzip": "DecodingError",
    "nan": "malformed chat completion",
    "infinity": "malformed chat completion",
    "surrogate": "malformed chat completion",
    "duplicate-keys": "malformed chat completion",
    "deep": "malformed chat completion",
    "not-json": "malformed chat completion",
    "big-int": "malformed chat completion",
    "html-error": "Trainer HTTP error: 500",
    "broken-gzip-error": "Trainer HTTP error: 503",
    "huge": "more than 65536 bytes",
    "gzip-bomb": "more than 65536 bytes",
    "unasked-encoding": "which was not asked for",
}


@pytest.fixture
async def poison_trainer() -> Any:
    async with serving_poison_trainer() as trainer:
        yield trainer


@pytest.mark.parametrize("kind", sorted(CHAT_POISONS))
async def test_a_poisoned_chat_answer_ends_one_rollout_only(
    start_server: StartServer, poison_trainer: PoisonTrainer, kind: str
) -> None:
    server = await start_server(max_response_bytes=65536)
    poisoned = {**init_body(Trainer(None, poison_trainer.url), rollout_id=f"{kind}/1")}  # type: ignore[arg-type]
    healthy = {**init_body(Trainer(None, poison_trainer.url), rollout_id="healthy")}  # type: ignore[arg-type]
    assert (await server.init(poisoned)).status_code == 202
    assert (await server.init(healthy)).status_code == 202

    bad = await poison_trainer.wait_result(f"{kind}/1")
    good = await poison_trainer.wait_result("healthy")
    assert good["status"] == "COMPLETED"
    assert bad["status"] == "ERROR"
    assert EXPECTED_ERRORS[kind] in bad["error_message"]
    assert "\x00" not in bad["error_message"]
    assert "\x1b" not in bad["error_message"]
    again = {**healthy, "rollout_id": "after"}
    assert (await server.init(again)).status_code == 202
    assert (await poison_trainer.wait_result("after"))["status"] == "COMPLETED"
    health = await server.health()
    assert health["status"] == "healthy"
    assert health["internal_errors"] == 0
    with trio.fail_after(10):
        while (await server.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert {rid: len(r) for rid, r in poison_trainer.results.items()} == {
        f"{kind}/1": 1,
        "healthy": 1,
        "after": 1,
    }


@pytest.mark.parametrize("kind", sorted(COMPLETED_POISONS))
async def test_an_odd_2xx_acknowledgement_still_acknowledges(
    start_server: StartServer, poison_trainer: PoisonTrainer, kind: str
) -> None:
    server = await start_server()
    body = init_body(Trainer(None, poison_trainer.url), rollout_id=f"{kind}/1")  # type: ignore[arg-type]
    assert (await server.init(body)).status_code == 202
    assert (await poison_trainer.wait_result(f"{kind}/1"))["status"] == "COMPLETED"
    with trio.fail_after(10):
        while (await server.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    health = await server.health()
    assert (health["lost_results"], health["internal_errors"]) == (0, 0)
    assert len(poison_trainer.results[f"{kind}/1"]) == 1
    assert (await server.init({**body, "rollout_id": "next"})).status_code == 202


async def test_what_agent_code_cannot_send_becomes_an_honest_result(
    start_server: StartServer, trainer: Trainer
) -> None:
    @tool
    def shout(text: str) -> str:
        """Answers with a lone surrogate.

        Args:
            text: anything.
        """
        return text + "\udcff"

    async def loop(ctx: RolloutContext) -> None:
        if ctx.rollout_id == "nan-message":
            ctx.append(Message("user", "x", extra={"score": float("nan")}))
        await ctx.chat()

    def reward(trajectory: Trajectory) -> float:
        return float("nan") if trajectory.rollout_id == "nan-reward" else 1.0

    server = await start_server(agent=Agent("odd", tools=[shout], loop=loop, reward=reward))
    nan_message = await run_to_result(server, trainer, init_body(trainer, rollout_id="nan-message"))
    nan_reward = await run_to_result(server, trainer, init_body(trainer, rollout_id="nan-reward"))
    healthy = await run_to_result(server, trainer, init_body(trainer, rollout_id="healthy"))

    assert nan_message["status"] == "ERROR"
    assert "cannot be sent as JSON" in nan_message["error_message"]
    assert nan_reward["status"] == "ERROR"
    assert "not a finite number" in nan_reward["error_message"]
    assert "reward" not in nan_reward
    assert healthy["status"] == "COMPLETED"
    assert (await server.health())["internal_errors"] == 0


async def test_a_tool_answering_a_lone_surrogate_is_cleaned(
    start_server: StartServer, trainer: Trainer
) -> None:
    from rollout.examples.calculator import agent as calculator

    @tool
    def add(a: float, b: float) -> str:
        """Adds, and answers with a lone surrogate.

        Args:
            a: first.
            b: second.
        """
        return f"{a + b}\udcff"

    others = [t for t in calculator.tools if t.name != "add"]
    server = await start_server(agent=Agent("calc", tools=[add, *others]))
    result = await run_to_result(server, trainer, init_body(trainer))
    assert result["status"] == "COMPLETED"
    tool_messages = [m for m in result["final_messages"] if m["role"] == "tool"]
    assert tool_messages
    assert tool_messages[0]["content"].endswith("\ufffd")


# ---------------------------------------------------------------- the trainer policy (SSRF)


async def test_an_allow_list_refuses_other_trainers_at_init(
    start_server: StartServer, trainer: Trainer
) -> None:
    port = int(trainer.url.rsplit(":", 1)[1])
    server = await start_server(allow_trainers=(f"127.0.0.1:{port}",))
    assert (await run_to_result(server, trainer, init_body(trainer)))["status"] == "COMPLETED"

    other = init_body(trainer, rollout_id="other", server_url=f"http://127.0.0.1:{port + 1}")
    refused = await server.init(other)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["type"] == "trainer_not_allowed"
    named = init_body(trainer, rollout_id="named", server_url=f"http://localhost:{port}")
    assert (await server.init(named)).status_code == 422


async def test_the_allow_list_holds_at_connect_time_after_resolution(
    start_server: StartServer, trainer: Trainer, caplog: pytest.LogCaptureFixture
) -> None:
    """A host name passes the init when the list has networks; the address it resolves to
    is checked when connecting, and refused when outside them."""
    port = int(trainer.url.rsplit(":", 1)[1])
    allowed = await start_server(allow_trainers=("127.0.0.0/8",))
    body = init_body(trainer, rollout_id="by-name", server_url=f"http://localhost:{port}")
    assert (await run_to_result(allowed, trainer, body))["status"] == "COMPLETED"

    refused = await start_server(allow_trainers=("10.0.0.0/8",))
    body = init_body(trainer, rollout_id="refused", server_url=f"http://localhost:{port}")
    assert (await refused.init(body)).status_code == 202
    with trio.fail_after(30):
        while (await refused.health())["lost_results"] == 0:  # noqa: ASYNC110
            await trio.sleep(0.01)
    # Neither its chat turn nor its result reached the trainer: the address was refused.
    assert trainer.mock.chat_requests_for("refused") == []
    assert "refused" not in trainer.mock.results
    assert "not in the trainer allow-list" in caplog.text


async def test_the_synchronous_variant_never_echoes_a_trainers_answer(
    start_server: StartServer, poison_trainer: PoisonTrainer
) -> None:
    """The caller of POST /rollout may not be the trainer: it learns the status, never
    the body (that would make the server a proxy reading any reachable service)."""
    server = await start_server()
    body = init_body(Trainer(None, poison_trainer.url), rollout_id="html-error/1")  # type: ignore[arg-type]
    body["sampling_params"] = body.pop("completion_params")
    response = await server.client.post(f"{server.url}/rollout", json=body)
    assert response.status_code == 200
    assert "Trainer HTTP error: 500" in response.json()["error_message"]
    assert "oops" not in response.text


# ---------------------------------------------------------------- admission


async def test_results_waiting_for_a_dead_trainer_do_not_starve_admission(
    start_server: StartServer, trainer: Trainer
) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = await start_server(max_concurrent_rollouts=2, max_queued_rollouts=0)
    for index in range(4):
        body = init_body(trainer, rollout_id=f"dead-{index}", server_url=dead)
        with trio.fail_after(30):
            while (response := await server.init(body)).status_code == 429:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert response.status_code == 202
    with trio.fail_after(30):
        while (await server.health())["delivering_results"] < 4:  # noqa: ASYNC110
            await trio.sleep(0.01)

    result = await run_to_result(server, trainer, init_body(trainer, rollout_id="live"))
    assert result["status"] == "COMPLETED"


async def test_undelivered_results_are_bounded_separately(
    start_server: StartServer, trainer: Trainer
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = await start_server(max_undelivered_results=2)
    for index in range(2):
        body = init_body(trainer, rollout_id=f"dead-{index}", server_url=dead)
        assert (await server.init(body)).status_code == 202
    with trio.fail_after(30):
        while (await server.health())["delivering_results"] < 2:  # noqa: ASYNC110
            await trio.sleep(0.01)
    refused = await server.init(init_body(trainer, rollout_id="live"))
    assert refused.status_code == 429
    assert "wait for their trainers" in refused.json()["detail"]
    assert refused.headers["retry-after"]


async def test_init_bytes_of_unfinished_rollouts_are_bounded(
    start_server: StartServer, trainer: Trainer
) -> None:
    release = trio.Event()
    server = await start_server(agent=gated_agent(release), max_admitted_bytes=300_000)
    big = {"blob": "x" * 100_000}
    statuses = [
        (await server.init(init_body(trainer, rollout_id=f"big-{i}", metadata=big))).status_code
        for i in range(4)
    ]
    assert statuses == [202, 202, 429, 429]
    release.set()
    for index in range(2):
        assert (await trainer.mock.wait_result(f"big-{index}"))["status"] == "COMPLETED"
    with trio.fail_after(30):
        while (await server.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    again = await server.init(init_body(trainer, rollout_id="big-9", metadata=big))
    assert again.status_code == 202


# ---------------------------------------------------------------- one rollout_id, one run


async def test_a_rollout_id_runs_once_whatever_its_idempotency_key(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server()
    answers = [
        await server.init(init_body(trainer, rollout_id="once", idempotency_key=f"k-{i}"))
        for i in range(5)
    ]
    assert [a.status_code for a in answers] == [202, 409, 409, 409, 409]
    assert all("k-0" not in a.text for a in answers[1:])
    await trainer.mock.wait_result("once")
    with trio.fail_after(10):
        while (await server.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert len(trainer.mock.results["once"]) == 1
    assert len(trainer.mock.chat_requests_for("once")) == 2  # one run of two turns


async def test_an_idempotency_key_does_not_squat_another_rollouts_id(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server()
    first = await server.init(init_body(trainer, rollout_id="r-1", idempotency_key="r-2"))
    second = await server.init(init_body(trainer, rollout_id="r-2"))
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["rollout_id"] == "r-2"
    assert (await trainer.mock.wait_result("r-1"))["status"] == "COMPLETED"
    assert (await trainer.mock.wait_result("r-2"))["status"] == "COMPLETED"


# ---------------------------------------------------------------- headers and connections


async def test_the_bearer_scheme_is_case_insensitive(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server(api_key="inbound-1")
    for scheme in ("Bearer", "bearer", "BEARER"):
        body = init_body(trainer, rollout_id=f"auth-{scheme}")
        response = await server.init(body, headers={"authorization": f"{scheme} inbound-1"})
        assert response.status_code == 202, scheme
    for header in ("Basic inbound-1", "Bearer", "inbound-1", "Bearer inbound-2", "Bearer \u00e9"):
        body = init_body(trainer, rollout_id="auth-bad")
        response = await server.client.post(
            f"{server.url}/v1/rollout/init",
            content=json.dumps(body).encode(),
            headers=[
                (b"authorization", header.encode("utf-8")),
                (b"content-type", b"application/json"),
            ],
        )
        assert response.status_code == 401, header


@pytest.mark.parametrize("refusal", ["401", "415", "413"])
async def test_a_kept_alive_connection_survives_an_early_refusal(
    start_server: StartServer, trainer: Trainer, refusal: str
) -> None:
    """Answered before its body was read, a refused request must not leave that body on
    the connection for the next request to trip over (it used to hang ~1 in 5)."""
    server = await start_server(api_key="inbound-1", max_body_bytes=2_000_000)
    good = {"authorization": "Bearer inbound-1"}
    headers = {
        "401": {"authorization": "Bearer wrong"},
        "415": {**good, "content-type": "text/plain"},
        "413": good,
    }[refusal]
    padding = "x" * (3_000_000 if refusal == "413" else 1_500_000)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:
        for index in range(20):
            body = json.dumps(init_body(trainer, rollout_id=f"ka-{index}", metadata={"p": padding}))
            refused = await client.post(
                f"{server.url}/v1/rollout/init",
                content=body.encode(),
                headers={"content-type": "application/json", **headers},
            )
            assert refused.status_code == int(refusal)
            health = await client.get(f"{server.url}/health")
            assert health.status_code == 200


# ---------------------------------------------------------------- secrets


async def test_a_token_in_the_trainer_url_is_redacted(
    start_server: StartServer, trainer: Trainer, caplog: pytest.LogCaptureFixture
) -> None:
    from rollout.testing import Fault

    caplog.set_level(logging.DEBUG)
    trainer.mock.chat_faults.extend(Fault(400) for _ in range(3))
    server = await start_server()
    body = init_body(trainer, server_url=f"{trainer.url}/?token=tok-canary-91")
    result = await run_to_result(server, trainer, body)

    assert result["status"] == "ERROR"
    assert "tok-canary-91" not in result["error_message"]
    assert "?***" in result["error_message"]
    assert "tok-canary-91" not in caplog.text

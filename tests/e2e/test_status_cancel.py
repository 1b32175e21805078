"""GET /v1/rollout/{id} and cancel (one, by ids, by prefix, all): a cancelled rollout stops
wherever it is and still gets exactly one result, ERROR "cancelled" (docs/PROTOCOL.md §3)."""

from __future__ import annotations

import trio

from conftest import StartServer, Trainer, gated_agent, init_body
from rollout._server.openapi import openapi


async def test_status_and_cancel(start_server: StartServer, trainer: Trainer) -> None:
    release = trio.Event()
    server = await start_server(
        agent=gated_agent(release), api_key="inbound-3", max_concurrent_rollouts=2
    )
    auth = {"authorization": "Bearer inbound-3"}
    for rollout_id in ("r-1", "r-2", "g/1", "g/2", "keep"):
        response = await server.init(init_body(trainer, rollout_id=rollout_id), headers=auth)
        assert response.status_code == 202

    url = f"{server.url}/v1/rollout"
    status = (await server.client.get(f"{url}/r-1", headers=auth)).json()
    assert status["rollout_id"] == "r-1"
    assert set(status) == set(
        openapi("x", "1")["components"]["schemas"]["RolloutStatus"]["properties"]
    )
    assert status["phase"] in ("queued", "running")
    assert (status["cancelled"], status["result"]) == (False, None)
    assert (await server.client.get(f"{url}/nope", headers=auth)).status_code == 404
    assert (await server.client.get(f"{url}/r-1")).status_code == 401

    one = await server.client.post(f"{url}/r-1/cancel", headers=auth)
    assert one.json() == {"rollout_id": "r-1", "cancelled": True}
    again = await server.client.post(f"{url}/r-1/cancel", headers=auth)
    assert again.json() == {"rollout_id": "r-1", "cancelled": False}  # idempotent
    by_prefix = await server.client.post(f"{url}/cancel", json={"prefix": "g/"}, headers=auth)
    assert sorted(by_prefix.json()["cancelled"]) == ["g/1", "g/2"]
    by_ids = await server.client.post(
        f"{url}/cancel", json={"rollout_ids": ["r-2", "unknown"]}, headers=auth
    )
    assert by_ids.json() == {"cancelled": ["r-2"]}
    bad = await server.client.post(f"{url}/cancel", json={"prefix": ""}, headers=auth)
    assert bad.status_code == 422

    for rollout_id in ("r-1", "r-2", "g/1", "g/2"):
        result = await trainer.mock.wait_result(rollout_id)
        assert (result["status"], result["finish_reason"]) == ("ERROR", "cancelled")
        assert result["error_message"] == "the rollout was cancelled on request"
    release.set()
    assert (await trainer.mock.wait_result("keep"))["status"] == "COMPLETED"
    with trio.fail_after(10):
        while (await server.health())["active_rollouts"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert {rid: len(r) for rid, r in trainer.mock.results.items()} == dict.fromkeys(
        ("r-1", "r-2", "g/1", "g/2", "keep"), 1
    )
    done = (await server.client.get(f"{url}/keep", headers=auth)).json()
    assert done["phase"] == "done"
    assert done["result"] == {"status": "COMPLETED", "finish_reason": "stop", "reward": None}
    assert done["turns"] == 1
    cancelled = (await server.client.get(f"{url}/g/1", headers=auth)).json()
    assert (cancelled["cancelled"], cancelled["result"]["finish_reason"]) == (True, "cancelled")
    everything = await server.client.post(f"{url}/cancel", json={"all": True}, headers=auth)
    assert everything.json() == {"cancelled": []}  # nothing left running


async def test_hostile_status_and_cancel_requests_get_4xx(
    start_server: StartServer, trainer: Trainer
) -> None:
    server = await start_server()
    url = f"{server.url}/v1/rollout"
    bodies = [
        b"not json",
        b'{"all": NaN}',
        b'{"prefix": "a", "prefix": "b"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"rollout_ids": ["\\ud800"]}',
        b'{"rollout_ids": [1, 2]}',
        b'{"all": "yes"}',
        b"\xff\xfe",
    ]
    for body in bodies:
        response = await server.client.post(
            f"{url}/cancel", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, body[:40]
        assert "detail" in response.json()
    for odd in ("%00", "a%2Fb", "x" * 5000, "..%2F..%2Fhealth", "%F0%9F%98%80"):
        assert (await server.client.get(f"{url}/{odd}")).status_code == 404, odd
        assert (await server.client.post(f"{url}/{odd}/cancel")).status_code == 404, odd
    assert (await server.client.get(f"{url}/init")).status_code == 405
    assert (await server.health())["status"] == "healthy"

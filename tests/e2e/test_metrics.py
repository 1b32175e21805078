"""GET /metrics: Prometheus text with inits by outcome, rollouts in flight by phase, results
by status, latency histograms and trainer attempts, retries and errors."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, Trainer, init_body, run_to_result
from rollout.testing import Fault


async def _samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await server.client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_follow_the_rollouts(server: Server, trainer: Trainer) -> None:
    trainer.mock.chat_faults.append(Fault(503))  # one retried chat attempt
    result = await run_to_result(server, trainer, init_body(trainer))
    assert result["status"] == "COMPLETED"
    assert (await server.init(init_body(trainer, max_turns=2))).status_code == 409
    bad: dict[str, Any] = {"rollout_id": "x"}
    assert (await server.init(bad)).status_code == 422

    samples = await _samples(server)
    assert samples[("rollout_inits_total", (("outcome", "started"),))] == 1
    assert samples[("rollout_inits_total", (("outcome", "409"),))] == 1
    assert samples[("rollout_inits_total", (("outcome", "422"),))] == 1
    key = (("finish_reason", "stop"), ("status", "COMPLETED"))
    assert samples[("rollout_results_total", key)] == 1
    assert samples[("rollout_seconds_count", ())] == 1
    assert samples[("rollout_llm_call_seconds_count", ())] == 2  # two turns
    assert samples[("rollout_trainer_requests_total", (("kind", "chat"),))] == 3
    assert samples[("rollout_trainer_retries_total", (("kind", "chat"),))] == 1
    assert (
        samples[("rollout_trainer_errors_total", (("error", "TrainerHTTPError"), ("kind", "chat")))]
        == 1
    )
    assert samples[("rollout_in_flight", (("phase", "running"),))] == 0
    assert samples[("rollout_results_lost_total", ())] == 0

"""GET /docs in a real headless Chromium: the page renders /openapi.json with its own
script, from this server alone (run by ``nox -s browser``; needs a chromium binary)."""

from __future__ import annotations

import shutil

import pytest
import trio

from conftest import Server

pytestmark = pytest.mark.browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise AssertionError("no chromium binary: apt-get install chromium (nox -s browser says so)")


async def test_the_docs_page_renders_the_spec(server: Server) -> None:
    command = [
        _chromium(),
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"),
        *("--virtual-time-budget=10000", "--dump-dom", f"{server.url}/docs"),
    ]
    with trio.fail_after(120):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    dom = done.stdout.decode()

    assert 'data-loaded="yes"' in dom  # the script ran and fetched /openapi.json
    assert "rollout server: calculator" in dom
    for operation in ("initRollout", "runRolloutSync", "health", "rolloutStatus"):
        assert f'id="{operation}"' in dom
    assert 'id="schema-InitRequest"' in dom
    assert "/v1/rollout/init" in dom

"""The public API, pinned (as trio's export tests do): a name added to or dropped from
``rollout.__all__`` is a decision, made here on purpose."""

from __future__ import annotations

import inspect

import rollout

PUBLIC = {
    "Agent",
    "AgentError",
    "AgentLoop",
    "Completion",
    "CompletionParams",
    "EngineFailure",
    "FinishReason",
    "InitRequest",
    "MalformedCompletionError",
    "Message",
    "Metrics",
    "RetryPolicy",
    "RewardFn",
    "RolloutContext",
    "RolloutError",
    "RolloutResult",
    "ServerConfig",
    "Status",
    "Tool",
    "ToolCall",
    "ToolError",
    "TrainerError",
    "TrainerExchangeError",
    "TrainerHTTPError",
    "TrainerNotAllowedError",
    "TrainerTransportError",
    "Trajectory",
    "Usage",
    "create_app",
    "serve",
    "tool",
    "tool_loop",
}


def test_the_public_names_are_exactly_these() -> None:
    assert set(rollout.__all__) == PUBLIC
    assert len(rollout.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert hasattr(rollout, name), name


def test_public_classes_and_functions_say_they_come_from_rollout() -> None:
    for name in PUBLIC:
        obj = getattr(rollout, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "rollout", name


def test_no_public_module_leaks_implementation_names() -> None:
    """The public modules are the agent API, tools, errors and settings; implementation
    lives in underscore packages."""
    public_modules = {"agent", "tools", "errors", "config", "cli", "demo", "examples", "porting"}
    import pkgutil

    found = {m.name for m in pkgutil.iter_modules(rollout.__path__) if not m.name.startswith("_")}
    assert found <= public_modules | {"testing"}

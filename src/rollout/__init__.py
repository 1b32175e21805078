"""rollout: a rollout server for RL training of LLM agents, on Trio structured concurrency.

The public API; import from here, not from the submodules (those whose names start with an
underscore are private and may change at any release)::

    from rollout import Agent, tool, RolloutContext, create_app, serve

Every public name reports ``rollout`` as its ``__module__``, as Trio's and httpx's do, so
reprs, tracebacks and docs show where to import it from.
"""

import inspect

from ._server.app import create_app
from ._server.serve import serve
from ._trainer.chat import Completion, Usage
from ._wire.models import (
    CompletionParams,
    FinishReason,
    InitRequest,
    Message,
    Metrics,
    RolloutResult,
    Status,
    ToolCall,
)
from .agent import Agent, AgentLoop, RewardFn, RolloutContext, Trajectory, tool_loop
from .config import RetryPolicy, ServerConfig
from .errors import (
    AgentError,
    EngineFailure,
    MalformedCompletionError,
    RolloutError,
    ToolError,
    TrainerError,
    TrainerExchangeError,
    TrainerHTTPError,
    TrainerNotAllowedError,
    TrainerTransportError,
)
from .tools import Tool, tool

__all__ = [
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
]


def _fix_module_names() -> None:
    """Point ``__module__`` of every public class and function at this package."""
    for name in __all__:
        obj = globals()[name]
        public = isinstance(obj, type) or inspect.isfunction(obj)
        if public and obj.__module__.startswith("rollout."):
            obj.__module__ = "rollout"


_fix_module_names()

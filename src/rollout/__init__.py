"""rollout: a rollout server for RL training of LLM agents, on Trio structured concurrency.

The public API; import from here, not from the submodules::

    from rollout import Agent, tool, RolloutContext, create_app, serve
"""

from .agent import Agent, AgentLoop, RewardFn, RolloutContext, Trajectory, tool_loop
from .app import create_app
from .config import ServerConfig
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
from .protocol import FinishReason, InitRequest, Message, RolloutResult, Status, ToolCall
from .serve import serve
from .tools import Tool, tool
from .trainer import RetryPolicy

__all__ = [
    "Agent",
    "AgentError",
    "AgentLoop",
    "EngineFailure",
    "FinishReason",
    "InitRequest",
    "MalformedCompletionError",
    "Message",
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
    "create_app",
    "serve",
    "tool",
    "tool_loop",
]

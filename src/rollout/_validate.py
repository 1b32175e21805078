"""Loading an agent from ``module:name`` and checking it without serving it.

:func:`load_agent` imports the agent and turns every way that can fail (no such module, a
SyntaxError, an exception at import such as an unsupported tool annotation, a missing
attribute, a factory that raises, something that is not an :class:`~rollout.Agent`) into an
:class:`AgentLoadError` with one line. :func:`check_agent` then lists what would break at
run time: tool schemas that are not OpenAI function schemas, a reward function or loop
that cannot be called the way the server calls it. ``rollout validate`` prints both;
``rollout serve`` runs the same checks before it listens.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import jsonschema

from . import porting
from .agent import Agent
from .errors import RolloutError

__all__ = ["AgentLoadError", "Problem", "check_agent", "import_module", "load_agent"]

#: OpenAI's rule for function names.
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class AgentLoadError(RolloutError):
    """The agent could not be imported or built; the message is one line saying why."""


@attrs.frozen
class Problem:
    """One thing wrong with an agent: ``check`` names the check, ``message`` says what."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


def load_agent(reference: str) -> Agent:
    """Import ``"package.module:name"``; ``name`` is an :class:`~rollout.Agent` or a function
    returning one. Modules are found from the current directory too (as uvicorn and
    hypercorn do), so ``-m weather:agent`` loads ``./weather.py``.

    Raises :class:`AgentLoadError` with one line for every way that fails.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AgentLoadError(f"expected 'module:name', got {reference!r}")
    module = import_module(module_name)
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise AgentLoadError(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(target) and not isinstance(target, Agent):
        try:
            target = target()
        except Exception as exc:
            raise AgentLoadError(f"{reference}() raised {_one_line(exc)}{_origin(exc)}") from None
    if not isinstance(target, Agent) and porting.looks_like_reference_loop(target):
        try:
            target = porting.from_reference(target)  # a loop written for the reference SDK
        except Exception as exc:
            raise AgentLoadError(
                f"{reference}: adapting the agent loop failed: {_one_line(exc)}{_origin(exc)}"
            ) from None
    if not isinstance(target, Agent):
        raise AgentLoadError(f"{reference} is a {type(target).__name__}, not a rollout.Agent")
    return target


def import_module(module_name: str) -> ModuleType:
    """Import ``module_name``, found from the current directory too. Raises
    :class:`AgentLoadError` with one line (a SyntaxError names file and line)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except SyntaxError as exc:
        where = f"{Path(exc.filename or module_name).name}:{exc.lineno}"
        raise AgentLoadError(f"cannot import {module_name!r}: {where}: {exc.msg}") from None
    except ImportError as exc:
        raise AgentLoadError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise AgentLoadError(
            f"importing {module_name!r} raised {_one_line(exc)}{_origin(exc)}"
        ) from None


def check_agent(agent: Agent) -> list[Problem]:
    """What would break when ``agent`` serves: an empty list when nothing."""
    problems: list[Problem] = []
    if not agent.name.strip():
        problems.append(Problem("name", "the agent's name is empty"))
    for schema in agent.tool_schemas:
        problems.extend(_tool_schema_problems(schema))
    if agent.reward is not None:
        problems.extend(_signature_problems("reward", agent.reward, coroutine=None))
    problems.extend(_signature_problems("loop", agent.loop, coroutine=True))
    return problems


def _tool_schema_problems(schema: Any) -> list[Problem]:
    function = schema.get("function") if isinstance(schema, dict) else None
    if schema.get("type") != "function" or not isinstance(function, dict):
        return [Problem("tools", f"{schema!r} is not an OpenAI function tool")]
    name = function.get("name")
    check = f"tool {name!r}"
    problems = []
    if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
        problems.append(Problem(check, "the name must be 1-64 letters, digits, '_' or '-'"))
    if not isinstance(function.get("description"), str) or not function["description"].strip():
        problems.append(Problem(check, "no description: the model sees only the name"))
    parameters = function.get("parameters")
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        problems.append(Problem(check, "parameters must be a JSON Schema of type 'object'"))
    else:
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            problems.append(
                Problem(check, f"parameters are not a valid JSON Schema: {exc.message}")
            )
    return problems


def _signature_problems(
    what: str, function: Callable[..., Any], *, coroutine: bool | None
) -> list[Problem]:
    """``function`` must take one positional argument (a Trajectory or a RolloutContext);
    ``coroutine``: it must (True) or may (None) be ``async``."""
    if not callable(function):
        return [Problem(what, f"{function!r} is not callable")]  # type: ignore[unreachable]
    if coroutine and not inspect.iscoroutinefunction(function):
        return [Problem(what, f"{_name(function)} must be 'async def {_name(function)}(ctx)'")]
    try:
        inspect.signature(function).bind(object())
    except TypeError:
        argument = "trajectory" if what == "reward" else "ctx"
        return [Problem(what, f"{_name(function)} must take one argument ({argument})")]
    except ValueError:  # no signature (a builtin): nothing to say
        return []
    return []


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _origin(exc: BaseException) -> str:
    """`` (file.py:LINE)``: the innermost frame of ``exc`` outside this package."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and "/rollout/" not in frame.filename
    ]
    if not frames:
        return ""
    return f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})"

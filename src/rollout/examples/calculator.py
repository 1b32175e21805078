"""The calculator agent: four arithmetic tools and an exact-answer reward.

The model gets ``add``, ``subtract``, ``multiply`` and ``divide`` and the standard tool loop.
The reward compares the last number in the final answer with ``metadata.ground_truth``:
1.0 when they agree within a relative tolerance of 1e-6 (absolute 1e-9 near zero), else 0.0.
Dividing by zero is answered as a tool error ("Error: division by zero"), not a crash.
"""

from __future__ import annotations

import math
import re

from rollout import Agent, ToolError, Trajectory, tool

__all__ = ["agent", "extract_number", "reward"]

#: A decimal number, optionally signed, with optional thousands separators and exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


@tool
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: The first addend.
        b: The second addend.
    """
    return a + b


@tool
def subtract(a: float, b: float) -> float:
    """Subtract b from a.

    Args:
        a: The minuend.
        b: The subtrahend.
    """
    return a - b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@tool
def divide(a: float, b: float) -> float:
    """Divide a by b.

    Args:
        a: The dividend.
        b: The divisor; must not be zero.
    """
    if b == 0:
        raise ToolError("division by zero")
    return a / b


def extract_number(text: str) -> float | None:
    """The last number written in ``text`` (``"The answer is 1,234.5."`` -> 1234.5), or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


def reward(trajectory: Trajectory) -> float:
    """1.0 when the final answer's last number equals ``metadata["ground_truth"]``, else 0.0."""
    expected = extract_number(str(trajectory.metadata.get("ground_truth", "")))
    answer = extract_number(trajectory.final_answer)
    if expected is None or answer is None:
        return 0.0
    return 1.0 if math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9) else 0.0


agent = Agent(name="calculator", tools=[add, subtract, multiply, divide], reward=reward)

"""The scripted model: pure logic, no I/O.

Given a chat history and the advertised tools, :func:`respond` returns the next assistant
message of a model that solves calculator questions with tools (and, for any other agent,
calls that agent's tools: :mod:`rollout.testing._generic`). It is stateless: the next step
is derived from the history alone.

- The question is the last ``user`` message. Its arithmetic (numbers, ``+ - * /``, ``x``,
  the multiplication and division signs, parentheses, and the words plus / minus / times /
  multiplied by / divided by / over) is parsed with :mod:`ast`, never evaluated with ``eval``.
- One tool call per binary operation (``add``/``subtract``/``multiply``/``divide`` with
  ``{"a": left, "b": right}``). Every operation whose operands are known is called in the
  same turn, so "(2 + 3) * (4 + 5)" makes two calls in one message, then one.
- Results come back from the ``tool`` messages (matched by ``tool_call_id``). A non-numeric
  tool result (an error text) ends with "I could not compute that: <text>".
- Then it answers "The answer is <n>.".
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from ._generic import respond_with_tools

__all__ = ["Behaviour", "Reply", "format_number", "parse_expression", "respond"]

Behaviour = Literal["calculator", "always_tools"]

_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
}
_DEFAULT_TOOLS = frozenset(_OPERATORS.values())
_WORDS = [
    (r"\bmultiplied\s+by\b", "*"),
    (r"\bdivided\s+by\b", "/"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\btimes\b", "*"),
    (r"\bover\b", "/"),
    ("\u00d7", "*"),
    ("\u00f7", "/"),
    (r"(?<=\d)\s*[xX]\s*(?=[\d(])", "*"),
]
#: The longest run of characters that can be arithmetic.
#: How much of a question the model reads (arithmetic questions are short).
_MAX_QUESTION_CHARS = 4096
_EXPRESSION = re.compile(r"[-+*/().\d\s]*\d[-+*/().\d\s]*")


@attrs.frozen
class Reply:
    """The model's answer: an assistant message and its ``finish_reason``."""

    message: dict[str, Any]
    finish_reason: str


@attrs.frozen
class _Op:
    """One binary operation of the plan; operands are numbers or indexes of other ops."""

    tool: str
    left: float | int | _Ref
    right: float | int | _Ref


@attrs.frozen
class _Ref:
    index: int


def parse_expression(question: str) -> ast.expr | None:
    """The arithmetic in ``question`` as an :mod:`ast` expression, or None when there is none.

    Only the first ``_MAX_QUESTION_CHARS`` characters are read: the candidate pattern is
    quadratic in a long run of spaces, and a simulator must answer a hostile prompt fast.
    """
    text = question[:_MAX_QUESTION_CHARS]
    for pattern, symbol in _WORDS:
        text = re.sub(pattern, f" {symbol} ", text, flags=re.IGNORECASE)
    candidates = sorted(
        (m.group().strip() for m in _EXPRESSION.finditer(text)), key=len, reverse=True
    )
    for candidate in candidates:
        candidate = candidate.rstrip(".").strip()
        try:
            tree = ast.parse(candidate, mode="eval").body
        except SyntaxError:
            continue
        if _is_arithmetic(tree):
            return tree
    return None


def _is_arithmetic(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd) and _is_arithmetic(node.operand)
    if isinstance(node, ast.BinOp):
        return (
            type(node.op) in _OPERATORS and _is_arithmetic(node.left) and _is_arithmetic(node.right)
        )
    return False


def _plan(node: ast.expr, ops: list[_Op]) -> float | int | _Ref:
    """Post-order list of operations; returns the number or the op computing ``node``."""
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)
        return node.value
    if isinstance(node, ast.UnaryOp):
        value = _plan(node.operand, ops)
        if isinstance(value, _Ref):  # -(a + b): multiply by -1
            ops.append(_Op("multiply", value, -1))
            return _Ref(len(ops) - 1)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.BinOp)
    left, right = _plan(node.left, ops), _plan(node.right, ops)
    ops.append(_Op(_OPERATORS[type(node.op)], left, right))
    return _Ref(len(ops) - 1)


def _compute(node: ast.expr) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)
        return float(node.value)
    if isinstance(node, ast.UnaryOp):
        value = _compute(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    assert isinstance(node, ast.BinOp)
    a, b = _compute(node.left), _compute(node.right)
    match node.op:
        case ast.Add():
            return a + b
        case ast.Sub():
            return a - b
        case ast.Mult():
            return a * b
        case _:
            return a / b  # ZeroDivisionError is the caller's to handle


def format_number(value: float | int) -> str:
    """84.0 -> "84"; 1.23456789 -> "1.234568"; -0.5 -> "-0.5"."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _number(text: str) -> float | int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    return ""


def _final(content: str) -> Reply:
    return Reply({"role": "assistant", "content": content}, "stop")


def respond(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    behaviour: Behaviour = "calculator",
) -> Reply:
    """The next assistant message for ``messages`` (OpenAI chat format).

    ``tools`` is the request's ``tools`` list, or None when the request had none (trainers
    of the reference never send it: then the four calculator tools are assumed). When the
    tools are not the calculator's, any agent's tools are called instead
    (:mod:`rollout.testing._generic`).
    """
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    if behaviour == "always_tools":
        call = _call(turn, 0, "add", 1, 1)
        return Reply({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")

    question = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    available = _DEFAULT_TOOLS if tools is None else {_tool_name(t) for t in tools}
    if tools and available.isdisjoint(_DEFAULT_TOOLS):  # not the calculator: any agent
        return Reply(*respond_with_tools(messages, tools, question))
    tree = parse_expression(question)
    if tree is None:
        return _final("I can only do arithmetic.")
    ops: list[_Op] = []
    root = _plan(tree, ops)
    if not isinstance(root, _Ref) or not {op.tool for op in ops} <= available:
        try:
            return _final(f"The answer is {format_number(_compute(tree))}.")
        except ZeroDivisionError:
            return _final("I could not compute that: division by zero.")

    # Replay the history: which ops were called (by argument values, in order) and answered.
    results: dict[int, float | int] = {}
    issued: dict[str, int] = {}  # tool_call_id -> op index
    pending_ops = list(range(len(ops)))
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                index = _match(call, ops, results, pending_ops)
                if index is not None:
                    issued[call.get("id", "")] = index
                    pending_ops.remove(index)
        elif message.get("role") == "tool" and message.get("tool_call_id") in issued:
            content = _text(message.get("content"))
            value = _number(content.strip())
            if value is None:
                return _final(f"I could not compute that: {content}")
            results[issued[message["tool_call_id"]]] = value

    if root.index in results:
        return _final(f"The answer is {format_number(results[root.index])}.")
    ready = [
        i
        for i in pending_ops
        if all(not isinstance(x, _Ref) or x.index in results for x in (ops[i].left, ops[i].right))
    ]
    if not ready:  # calls issued but unanswered: the server broke rule 2; answer honestly
        return _final("I am still waiting for tool results.")
    calls = [
        _call(turn, k, ops[i].tool, _value(ops[i].left, results), _value(ops[i].right, results))
        for k, i in enumerate(ready)
    ]
    return Reply({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls")


def _tool_name(tool: Mapping[str, Any]) -> str:
    function = tool.get("function")
    return str(function.get("name", "")) if isinstance(function, Mapping) else ""


def _value(operand: float | int | _Ref, results: Mapping[int, float | int]) -> float | int:
    return results[operand.index] if isinstance(operand, _Ref) else operand


def _match(
    call: Mapping[str, Any],
    ops: Sequence[_Op],
    results: Mapping[int, float | int],
    pending: Sequence[int],
) -> int | None:
    """The pending op a past tool call was made for (same tool, same arguments)."""
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        return None
    for index in pending:
        op = ops[index]
        if op.tool != function.get("name"):
            continue
        left = results.get(op.left.index) if isinstance(op.left, _Ref) else op.left
        right = results.get(op.right.index) if isinstance(op.right, _Ref) else op.right
        if arguments == {"a": left, "b": right}:
            return index
    return None


def _call(turn: int, k: int, name: str, a: float | int, b: float | int) -> dict[str, Any]:
    return {
        "id": f"call_{turn}_{k}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"a": a, "b": b})},
    }

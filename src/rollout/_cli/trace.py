"""``rollout trace PATH``: a trace (``--log``) or a results file (``rollout test -o``) as a
readable conversation in the terminal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

__all__ = ["show_message", "trace_command"]

_ROLE_STYLES = {"system": "dim", "user": "bold cyan", "assistant": "bold green", "tool": "yellow"}


@click.command("trace")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def trace_command(path: Path) -> None:
    """Show a rollout trace (a .jsonl file of --log, or a directory of them) or a results
    file (rollout test -o, rollout demo) as a conversation."""
    console = Console()
    if path.is_dir():
        files = sorted(path.rglob("rollout-*.jsonl"))
        if not files:
            raise click.ClickException(f"{path} holds no rollout-*.jsonl trace")
        for file in files:
            _show_trace(file, console)
        return
    if path.suffix == ".jsonl":
        _show_trace(path, console)
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path} is neither a .jsonl trace nor JSON: {exc}") from None
    if not isinstance(rows, list):
        raise click.ClickException(f"{path}: expected a JSON array of results")
    for row in rows:
        if isinstance(row, dict):
            _show_result(row, console)


def _show_trace(file: Path, console: Console) -> None:
    console.rule(Text(file.name))
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            console.print(Text(f"{file.name}:{number}: not JSON, skipped", style="red"))
            continue
        if isinstance(event, dict):
            _show_event(event, console)


def _show_event(event: dict[str, Any], console: Console) -> None:
    name, turn = event.get("event"), event.get("turn")
    head = f"turn {turn} · {name}"
    if name == "pre_llm":
        console.print(Text(f"{head}: sending {event.get('messages')} messages", style="dim"))
    elif name == "llm_response":
        console.print(Text(f"{head} ({event.get('seconds')} s, {event.get('usage')})", style="dim"))
        if isinstance(event.get("message"), dict):
            show_message(event["message"], console)
    elif name == "tool_results":
        for result in event.get("results") or []:
            show_message({"role": "tool", **result}, console)
    elif name == "rollout_complete":
        style = "bold green" if event.get("status") == "COMPLETED" else "bold red"
        text = f"{event.get('status')} ({event.get('finish_reason')}) reward={event.get('reward')}"
        if event.get("error_message"):
            text += f": {event['error_message']}"
        console.print(Text(f"{head}: {text}", style=style))
    else:
        data = {k: v for k, v in event.items() if k not in ("ts", "event", "rollout_id", "turn")}
        console.print(Text(f"{head}: {json.dumps(data, ensure_ascii=False)}", style="magenta"))


def _show_result(row: dict[str, Any], console: Console) -> None:
    rollout_id = row.get("id", row.get("rollout_id"))
    console.rule(Text(f"{rollout_id}: {row.get('status')} reward={row.get('reward')}"))
    for message in row.get("messages") or row.get("final_messages") or []:
        if isinstance(message, dict):
            show_message(message, console)
    if row.get("error") or row.get("error_message"):
        console.print(Text(str(row.get("error") or row.get("error_message")), style="red"))


def show_message(message: Mapping[str, Any], console: Console) -> None:
    """One chat message in a line or a few: role, content, tool calls, tool_call_id."""
    role = str(message.get("role"))
    text = Text(f"{role}: ", style=_ROLE_STYLES.get(role, "bold"))
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    if content:
        text.append(str(content), style="default")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text.append(f"\n  → {function.get('name')}({function.get('arguments')})", style="cyan")
    if message.get("tool_call_id"):
        text.append(f"  [{message['tool_call_id']}]", style="dim")
    console.print(text)

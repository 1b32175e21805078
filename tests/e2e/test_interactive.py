"""``rollout test -i`` in a real pseudo-terminal: the prompt appears before each LLM call,
answers and tool calls are shown, and next / continue / skip / jump / quit act."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
ROWS = [
    {"id": "w-1", "user_prompt": "Weather in Paris?", "ground_truth": "18"},
    {"id": "w-2", "user_prompt": "How cold is it in Oslo?", "ground_truth": "4"},
    {"id": "w-3", "user_prompt": "And in Bergen?", "ground_truth": "7"},
]


class Terminal:
    """A process on a pseudo-terminal: type lines, wait for text (bounded)."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
        self.process = subprocess.Popen(
            command, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; got:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # the process closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} not seen before exit:\n{self.seen[-2000:]}")
                self.seen += re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", chunk.decode(errors="replace"))
        return self.seen

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            os.close(self.master)


def test_stepping_through_rows_in_a_terminal(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    (tmp_path / "weather.py").write_text(code)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    command = [sys.executable, "-m", "rollout", "test", "-m", "weather:agent"]
    command += ["-d", "rows.jsonl", "-i", "-o", "out.json"]
    terminal = Terminal(command, tmp_path)
    try:
        terminal.expect(r"row 1 of 3: w-1")
        terminal.expect(r"user: Weather in Paris\?")
        terminal.expect(r"LLM call 1: 1 messages\s+> ")
        terminal.type("n")
        terminal.expect(r"→ lookup\(\{\"city\": \"Paris\"\}\)")
        terminal.expect(r"tool: 18 celsius")
        terminal.expect(r"LLM call 2: 3 messages\s+> ")
        terminal.type("?")  # not a command: the help line again
        terminal.expect(r"\[n\]ext call")
        terminal.type("c")  # the rest of this row without stopping
        terminal.expect(r"COMPLETED \(stop\) reward=1\.0")
        terminal.expect(r"row 2 of 3: w-2")
        terminal.type("s")  # skip row 2
        terminal.expect(r"ERROR \(error\) reward=None")
        terminal.expect(r"row 3 of 3: w-3")
        terminal.type("j 1")  # back to row 1
        terminal.expect(r"row 1 of 3: w-1(.|\n)*row 1 of 3: w-1")
        terminal.type("q")
        terminal.expect(r"rollout test: weather")
        status = terminal.close()
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
    assert status == 1  # rows ended in ERROR (skipped, left, quit)
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["id"], r["status"]) for r in rows] == [
        ("w-1", "COMPLETED"),
        ("w-2", "ERROR"),
        ("w-3", "ERROR"),
        ("w-1", "ERROR"),
    ]
    assert rows[1]["error"] == "agent error: skipped in interactive mode"

"""Datasets for ``rollout demo``, ``test`` and ``eval``: rows to problems.

Formats, by file suffix: ``.jsonl`` (one JSON object per line), ``.json`` (an array of
objects), ``.csv`` (a header row; a ``messages`` cell holds JSON), ``.parquet`` (needs the
``parquet`` extra: ``pip install 'rollout[parquet]'``). A row is one of:

- the reference's format: ``user_prompt``, optional ``system_prompt``, ``ground_truth``;
- a ``messages`` list in the OpenAI chat format (the init's messages as they are);
- any shape, with ``prompt_field`` / ``answer_field`` naming the prompt and the answer.

``id`` is optional (``row-00001``, ... by position). Every other column goes to the init's
``metadata``, with ``ground_truth``. A bad file or row raises :class:`DatasetError` with one
line naming the file, the row and the field.

``group_size`` G makes G rollouts of each problem, as GRPO trains on: distinct ids
``<id>/g<k>`` and one ``group_id`` (the problem's id) in their metadata.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

__all__ = ["DatasetError", "Problem", "expand_groups", "load_problems"]

#: Roles a dataset message may have.
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class DatasetError(ValueError):
    """A dataset that cannot be read, or a row that is not a problem; the message names
    the file, the row and the field, in one line."""


@attrs.frozen
class Problem:
    """One row as an init: its ``messages``, the ``ground_truth`` (None when the row has
    none) and the rest of the row as ``metadata`` (JSON values)."""

    id: str
    messages: tuple[Mapping[str, Any], ...]
    ground_truth: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def question(self) -> str:
        """The last user message's text."""
        for message in reversed(self.messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""

    @property
    def group_id(self) -> str | None:
        """The GRPO group this problem belongs to (:func:`expand_groups`), or None."""
        group = self.metadata.get("group_id")
        return None if group is None else str(group)

    def init_metadata(self) -> dict[str, Any]:
        """The init's ``metadata``: the other columns, and ``ground_truth``."""
        metadata = dict(self.metadata)
        if self.ground_truth is not None:
            metadata["ground_truth"] = self.ground_truth
        return metadata


def load_problems(
    path: Path | None = None,
    *,
    prompt_field: str = "user_prompt",
    answer_field: str = "ground_truth",
) -> list[Problem]:
    """The problems of the dataset at ``path`` (the bundled 124 calculator problems when
    None). Raises :class:`DatasetError` (see the module docstring)."""
    if path is None:
        name = "calculator_problems.jsonl"
        text = resources.files("rollout.examples").joinpath(name).read_text()
        rows: Iterator[tuple[str, Any]] = _jsonl(name, text)
    else:
        rows = _rows(path)
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, (where, row) in enumerate(rows, 1):
        problem = _problem(row, where, index, prompt_field, answer_field)
        if problem.id in seen:
            raise DatasetError(f"{where}: id {problem.id!r} appears twice")
        seen.add(problem.id)
        problems.append(problem)
    return problems


def expand_groups(problems: Sequence[Problem], group_size: int) -> list[Problem]:
    """Each problem ``group_size`` times, ids ``<id>/g<k>``, ``group_id`` in metadata."""
    if group_size == 1:
        return list(problems)
    return [
        attrs.evolve(p, id=f"{p.id}/g{k}", metadata={**p.metadata, "group_id": p.id})
        for p in problems
        for k in range(group_size)
    ]


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    if suffix == ".csv":
        return _csv(str(path), text)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DatasetError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, list):
            raise DatasetError(f"{path}: a .json dataset is an array of objects")
        return ((f"{path}: row {n}", row) for n, row in enumerate(data, 1))
    return _jsonl(str(path), text)


def _jsonl(name: str, text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{number}", json.loads(line)
        except ValueError:
            raise DatasetError(
                f"{name}:{number}: not JSON (a .jsonl dataset holds one JSON object per line)"
            ) from None


def _csv(name: str, text: str) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise DatasetError(f"{name}: a .csv dataset needs a header row")
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if None in row:
            raise DatasetError(f"{where}: more cells than the header has columns")
        cells: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
        if isinstance(cells.get("messages"), str):
            try:
                cells["messages"] = json.loads(cells["messages"])
            except ValueError:
                raise DatasetError(f"{where}: field 'messages' is not JSON") from None
        yield where, cells


def _parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        raise DatasetError(
            f"{path}: reading Parquet needs pyarrow: pip install 'rollout[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot be read as Parquet ({exc})") from None
    return ((f"{path}: row {n}", row) for n, row in enumerate(table.to_pylist(), 1))


def _problem(row: Any, where: str, index: int, prompt_field: str, answer_field: str) -> Problem:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected an object, got {type(row).__name__}")
    row_id = row.get("id", f"row-{index:05d}")
    if not isinstance(row_id, str | int) or isinstance(row_id, bool) or not str(row_id).strip():
        raise DatasetError(f"{where}: field 'id' must be a non-empty string")
    answer = row.get(answer_field)
    if answer is not None and not isinstance(answer, str | int | float):
        raise DatasetError(f"{where}: field {answer_field!r} must be a string or a number")
    if "messages" in row:
        messages = _messages(row["messages"], where)
        used = {"id", "messages", answer_field}
    else:
        prompt = row.get(prompt_field)
        if prompt is None:
            fields = f"{prompt_field!r} (or 'messages')"
            raise DatasetError(f"{where}: missing field {fields}; see --prompt-field")
        if not isinstance(prompt, str):
            raise DatasetError(f"{where}: field {prompt_field!r} must be a string")
        system = row.get("system_prompt")
        if system is not None and not isinstance(system, str):
            raise DatasetError(f"{where}: field 'system_prompt' must be a string")
        messages = ({"role": "user", "content": prompt},)
        if system:
            messages = ({"role": "system", "content": system}, *messages)
        used = {"id", prompt_field, "system_prompt", answer_field}
    metadata = {k: v for k, v in row.items() if k not in used}
    truth = None if answer is None else str(answer)
    return Problem(str(row_id), messages, truth, metadata)


def _messages(value: Any, where: str) -> tuple[Mapping[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list")
    for number, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise DatasetError(
                f"{where}: messages[{number}] must be an object with a role in {sorted(_ROLES)}"
            )
    return tuple(value)

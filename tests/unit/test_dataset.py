"""Datasets: the reference's rows, messages rows, field mapping, CSV, JSON, metadata,
GRPO groups, and one clear line for every bad file or row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout._dataset import DatasetError, expand_groups, load_problems


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_references_rows_without_ids(tmp_path: Path) -> None:
    rows = [
        {"system_prompt": "Be brief.", "user_prompt": "2 + 2?", "ground_truth": "4", "level": 1},
        {"user_prompt": "3 + 3?", "ground_truth": 6},
    ]
    path = _write(tmp_path, "d.jsonl", "".join(json.dumps(r) + "\n\n" for r in rows))
    first, second = load_problems(path)

    assert (first.id, second.id) == ("row-00001", "row-00002")
    assert first.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
    )
    assert first.init_metadata() == {"level": 1, "ground_truth": "4"}
    assert (second.question, second.ground_truth) == ("3 + 3?", "6")


def test_messages_rows_and_a_json_array(tmp_path: Path) -> None:
    rows = [{"id": "m1", "messages": [{"role": "user", "content": "hi"}], "ground_truth": "x"}]
    (problem,) = load_problems(_write(tmp_path, "d.json", json.dumps(rows)))
    assert problem.messages == ({"role": "user", "content": "hi"},)
    assert problem.init_metadata() == {"ground_truth": "x"}


def test_csv_with_field_mapping(tmp_path: Path) -> None:
    text = 'q,answer,topic\n"What is 2, plus 2?",4,math\nHi,,chat\n'
    first, second = load_problems(
        _write(tmp_path, "d.csv", text), prompt_field="q", answer_field="answer"
    )
    assert first.question == "What is 2, plus 2?"
    assert first.init_metadata() == {"topic": "math", "ground_truth": "4"}
    assert second.ground_truth is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.jsonl", "id,user_prompt\n1,2\n", "d.jsonl:1: not JSON"),
        ("d.jsonl", '{"id": "a", "ground_truth": "1"}\n', "d.jsonl:1: missing field 'user_prompt'"),
        ("d.jsonl", '{"id": "a", "user_prompt": 3}\n', "d.jsonl:1: field 'user_prompt' must be"),
        ("d.jsonl", "[1, 2]\n", "d.jsonl:1: expected an object, got list"),
        (
            "d.jsonl",
            '{"id": "a", "user_prompt": "q"}\n{"id": "a", "user_prompt": "r"}\n',
            "d.jsonl:2: id 'a' appears twice",
        ),
        ("d.jsonl", '{"messages": [{"content": "x"}]}\n', "d.jsonl:1: messages[0] must be"),
        ("d.csv", "q,a\n1,2,3\n", "d.csv:2: more cells than the header"),
        ("d.csv", "", "d.csv: a .csv dataset needs a header row"),
        ("d.json", '{"a": 1}', "d.json: a .json dataset is an array of objects"),
        ("d.parquet", "not parquet", "d.parquet:"),
    ],
)
def test_a_bad_file_or_row_is_one_clear_line(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    with pytest.raises(DatasetError) as caught:
        load_problems(_write(tmp_path, name, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_groups_for_grpo(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.jsonl", '{"id": "p", "user_prompt": "q"}\n')
    grouped = expand_groups(load_problems(path), 3)
    assert [p.id for p in grouped] == ["p/g0", "p/g1", "p/g2"]
    assert {p.metadata["group_id"] for p in grouped} == {"p"}
    assert expand_groups(load_problems(path), 1)[0].id == "p"


def test_the_bundled_dataset_loads() -> None:
    problems = load_problems()
    assert len(problems) == 124
    assert problems[0].id == "calc-000"

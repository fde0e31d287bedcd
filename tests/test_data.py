import json
from pathlib import Path

import pandas as pd
import pytest

from socialr1.data import DataError, FieldMap, load_items

TOMBENCH = Path(__file__).resolve().parents[1].parent / "shared/data/tombench"

# options as one list, answers as option text: the shape of many Hub MCQ sets
LIST_FIELDS = FieldMap(story="context", question="q", options="choices", answer="label", ability="")
ROWS = [
    {"context": "Ana hides a coin.", "q": "Who knows?", "choices": ["Ana", "Bo"], "label": "Ana"},
    {"context": "", "q": "Pick six.", "choices": [str(i) for i in range(1, 7)], "label": "6"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.mark.skipif(not TOMBENCH.is_dir(), reason=f"ToMBench not found at {TOMBENCH}")
def test_tombench_loads_all_items():
    items = load_items(str(TOMBENCH))
    assert len(items) == 2860
    assert all(0 <= it.answer < len(it.options) for it in items)
    assert {len(it.options) for it in items} == {2, 4}  # yes/no items leave OPTION-C/D empty
    assert all(it.story and it.question and it.ability for it in items)
    assert items[0].source == "tombench/Ambiguous Story Task.jsonl:1"
    assert not any(o.startswith(("A. ", "B. ")) for it in items for o in it.options)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_list_options_text_answers(tmp_path, suffix):
    path = tmp_path / f"mcq.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, ROWS)
    else:
        pd.DataFrame(ROWS).to_parquet(path)
    items = load_items(str(path), LIST_FIELDS)
    assert [len(it.options) for it in items] == [2, 6]
    assert [it.answer_letter for it in items] == ["A", "F"]
    assert items[1].story == "" and items[1].source == f"mcq.{suffix}:2"


def test_csv_prefix_options_index_answers(tmp_path):
    path = tmp_path / "mcq.csv"
    pd.DataFrame(
        [
            {"s": "x", "q": "y", "optA": "no", "optB": "yes", "optC": "", "ans": 1},
            {"s": "x", "q": "y", "optA": "a", "optB": "b", "optC": "c", "ans": 2},
        ]
    ).to_csv(path, index=False)
    fields = FieldMap("s", "q", options="opt", answer="ans", answer_format="index", ability="")
    items = load_items(str(path), fields)
    assert [it.options for it in items] == [("no", "yes"), ("a", "b", "c")]
    assert [it.answer_letter for it in items] == ["B", "C"]


def test_folder_sorted_with_limit(tmp_path):
    fields = FieldMap(story="context", question="q", options="choices", answer="label")
    write_jsonl(tmp_path / "b.jsonl", ROWS)
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    items = load_items(str(tmp_path), fields, limit=2)
    assert [it.source for it in items] == [f"{tmp_path.name}/{f}.jsonl:1" for f in "ab"]


def tombench_row(**changes) -> dict:
    row = {"STORY": "s", "QUESTION": "q", "答案\nANSWER": "A", "能力\nABILITY": "Belief: x"}
    row |= {f"OPTION-{c}": c.lower() for c in "ABCD"}
    return row | changes


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"OPTION-B": ""}, "OPTION-B", "missing"),
        ({"OPTION-B": "", "OPTION-C": "", "OPTION-D": ""}, "OPTION-B", "need at least 2 options"),
        ({"答案\nANSWER": "E"}, "答案\nANSWER", "out of range"),
        ({"答案\nANSWER": "maybe"}, "答案\nANSWER", "not an option letter"),
        ({"QUESTION": " "}, "QUESTION", "missing"),
    ],
)
def test_malformed_row_names_file_row_field(tmp_path, change, field, problem):
    rows = [tombench_row()] * 16 + [tombench_row(**change)]
    write_jsonl(tmp_path / "False Belief Task.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_items(str(tmp_path))
    message = str(e.value)
    assert message.startswith(f"{tmp_path.name}/False Belief Task.jsonl: row 17: field {field!r}:")
    assert problem in message


def test_list_answer_text_must_match_one_option(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0] | {"label": "Cy"}])
    with pytest.raises(DataError, match=r"t.jsonl: row 1: field 'label': 'Cy' is not"):
        load_items(str(path), LIST_FIELDS)


def test_offline_hub_name_explains_local_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so the name cannot be a local folder
    with pytest.raises(DataError) as e:
        load_items("socialr1-test/no-such-dataset")
    message = str(e.value)
    assert "'socialr1-test/no-such-dataset'" in message and "could not be loaded" in message
    assert "--data.path" in message


def test_missing_local_file_is_not_a_hub_name(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_items(str(tmp_path / "absent.jsonl"))

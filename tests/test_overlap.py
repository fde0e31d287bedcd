"""Training items that are evaluation items are found by content, whatever file they come from: ToMBench
read as a training set, and a renamed and reformatted copy of part of it, overlap ToMBench; generated
items overlap nothing; with no benchmark data, nothing is found and nothing is printed."""

import json
import time

import pytest

from socialr1.data import FieldMap, load_items
from socialr1.evalsets import benchmark_overlap
from socialr1.evalsets.common import DATA_ROOT
from socialr1.evalsets.overlap import warning
from socialr1.synthetic import generate_items


@pytest.fixture(scope="module")
def tombench():
    if not (DATA_ROOT / "tombench").is_dir():
        pytest.skip(f"{DATA_ROOT / 'tombench'} is absent (evaluation data lives beside the checkout)")
    return load_items(str(DATA_ROOT / "tombench"))


def test_tombench_as_training_data_overlaps_tombench(tombench):
    start = time.perf_counter()
    found = benchmark_overlap(tombench)
    seconds = time.perf_counter() - start
    assert found == {"tombench": len(tombench)} and len(tombench) == 2860
    assert seconds < 15, seconds  # read and hashed (2-3 s on 2 cores), not compared pairwise
    text = warning(found, len(tombench))
    assert text == ("warning: training items are evaluation benchmark items (2860 of 2860 in tombench); accuracy on "
                    "those benchmarks will not measure generalisation: train on other data")


def test_a_renamed_reformatted_copy_is_found(tombench, tmp_path, items):
    """Fifty ToMBench items with other field names, other spacing and case, in a file of another
    name, among generated items."""
    rows = [{"context": f"  {it.story.upper()}  ", "ask": it.question.replace(" ", "  "), "choices": list(it.options),
             "gold": it.answer} for it in tombench[::57][:50]]
    rows += [{"context": it.story, "ask": it.question, "choices": list(it.options), "gold": it.answer} for it in items]
    (tmp_path / "my_training_set.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    mine = load_items(str(tmp_path / "my_training_set.jsonl"), FieldMap(story="context", question="ask",
                                                                       options="choices", answer="gold"))
    assert benchmark_overlap(mine) == {"tombench": 50}


def test_generated_items_overlap_nothing(tombench):
    assert benchmark_overlap(generate_items(500, seed=0)) == {}
    assert warning({}, 500) is None


def test_silent_without_benchmark_data(tmp_path, capfd):
    items = generate_items(20, seed=0)
    assert benchmark_overlap(items, data_root=str(tmp_path / "absent")) == {}
    assert benchmark_overlap(items, data_root=str(tmp_path)) == {}
    out, err = capfd.readouterr()
    assert out == err == ""

"""Each benchmark adapter on its real files in ../shared/data (skipped with a reason when absent):
item and option counts, and the gold of hand-checked items; the hub-only ones on rows we write."""

import json
from collections import Counter
from pathlib import Path

import pytest

from socialr1.data import DataError, FieldMap
from socialr1.evalsets import Sources, eval_items, load
from socialr1.evalsets.common import DATA_ROOT


def bench(name: str, **kw):
    if not (DATA_ROOT / name).is_dir():
        pytest.skip(f"{DATA_ROOT / name} is absent (evaluation data lives beside the checkout)")
    return load(name, Sources(**kw))


def by_id(b, source):
    return next(it for it in b.items if it.source == source)


@pytest.mark.parametrize("name, items, options", [
    ("tombench", 2860, {4: 2377, 2: 483}),
    ("socialiqa", 1954, {3: 1954}),
    ("emobench", 600, {4: 340, 6: 260}),
    ("motivebench", 600, {6: 600}),
    ("hitom", 600, {15: 600}),
    ("tactfultom", 2482, {4: 2314, 2: 168}),
    ("bigtom", 4800, {2: 4800}),
    ("opentom", 13706, {3: 7748, 2: 5958}),
])
def test_counts(name, items, options):
    b = bench(name)
    assert len(b.items) == items
    assert Counter(len(it.options) for it in b.items) == options


def test_tombench_gold_categories_and_protocol():
    b = bench("tombench")
    first = by_id(b, "tombench/False Belief Task.jsonl:1")
    assert (first.question, first.options[first.answer], first.ability) == ("Where is the cabbage now?", "Backpack", "Belief")
    assert Counter(it.answer_letter for it in b.items) == {"B": 967, "A": 768, "C": 619, "D": 506}
    assert Counter(it.ability for it in b.items)["Non-Literal Communication"] == 748
    assert (b.protocol.orders, b.protocol.aggregate) == (5, "majority")
    zh = bench("tombench", lang="zh")
    assert by_id(zh, "tombench/False Belief Task.jsonl:1").options[0] == "背包"


def test_socialiqa_gold_from_label_file():
    it = bench("socialiqa").items[0]
    assert it.options[it.answer] == "Find somewhere to go" and it.answer == 2


def test_emobench_two_eu_items_per_scenario_and_ea():
    b = bench("emobench")
    emotion, cause = by_id(b, "emobench/EU.jsonl:1:emotion"), by_id(b, "emobench/EU.jsonl:1:cause")
    assert emotion.options[emotion.answer] == "Delight" and emotion.question.startswith("What emotion(s) would Dorea")
    assert cause.options[cause.answer] == "Her daughter enjoyed the Baklava despite it being ruined"
    ea = by_id(b, "emobench/EA.jsonl:1")
    assert ea.answer == 3 and "most effective Action for Sarah" in ea.question


def test_motivebench_letters_stripped_and_fixed_orders():
    b = bench("motivebench")
    first = [by_id(b, f"motivebench/Amazon:0:{t}") for t in (1, 2, 3)]
    assert [it.answer_letter for it in first] == ["E", "E", "D"]
    assert first[0].options[4] == "To address her dog’s current discomfort"
    assert len(b.protocol.fixed) == 6 and b.protocol.fixed[1] == (5, 4, 3, 2, 1, 0)


def test_hitom_vp_half_without_instruction_line():
    b = bench("hitom")
    it = by_id(b, "hitom/Hi-ToM_data.json:300")
    assert it.story.startswith("1 Avery, Charlotte") and "Read the following" not in it.story
    assert (it.answer_letter, it.options[it.answer], it.ability) == ("K", "green_drawer", "order 0")
    assert len(bench("hitom", hitom_prompting="CoTP").items) == 600


def test_tactfultom_lists_and_gold():
    b = bench("tactfultom")
    it = by_id(b, "tactfultom/2-10-3-0-comprehension-0")
    assert sorted(it.options) == ["No", "Yes"] and it.options[it.answer] == "No"
    belief = by_id(b, "tactfultom/2-10-3-0-belief-6")
    assert belief.options[belief.answer].startswith("The text provides no information on what Leora believes about Easter's")
    assert "justificationQA" not in Counter(i.ability for i in b.items) and "beliefQAs" in b.note


def test_bigtom_and_opentom_gold():
    row0 = by_id(bench("bigtom"), "bigtom/0_forward_belief_false_belief:0")
    assert row0.options[row0.answer] == "Noor believes the milk pitcher contains oat milk."
    o = bench("opentom")
    assert [o_.options[o_.answer] for o_ in o.items if o_.source == "opentom/attitude:75682867:0"] == ["negative"]
    fine = by_id(o, "opentom/location_fg_fo_new:75682867:1")
    assert fine.options == ("basket", "a donation bin") and fine.answer == 0


def test_seeded_subset_is_fixed():
    a, b = bench("hitom"), load("hitom:50", Sources())
    assert len(b.items) == 50 and [i.source for i in b.items] == [i.source for i in load("hitom:50", Sources()).items]
    assert set(i.source for i in b.items) <= set(i.source for i in a.items)
    assert eval_items("hitom:50")[0] == b.items[0]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_simpletom_hub_schema(tmp_path):
    for config, key in (("mental-state-qa", "A"), ("behavior-qa", "B"), ("judgment-qa", "B")):
        write_jsonl(tmp_path / "simpletom" / f"{config}.jsonl", [
            {"id": f"{config}-1", "story": "Mary's milk is spoiled. She does not know.", "question": "Will Mary drink it?",
             "choices": {"label": ["A", "B"], "text": ["yes", "no"]}, "answerKey": key}])
    b = load("simpletom", Sources(data_root=str(tmp_path)))
    assert [(it.ability, it.options[it.answer]) for it in b.items] == [
        ("mental-state-qa", "yes"), ("behavior-qa", "no"), ("judgment-qa", "no")]
    write_jsonl(tmp_path / "simpletom" / "behavior-qa.jsonl", [
        {"story": "s", "question": "q", "choices": {"label": ["A", "B"], "text": ["x", "y"]}, "answerKey": "C"}])
    with pytest.raises(DataError, match="behavior-qa.jsonl:1: field 'answerKey'"):
        load("simpletom", Sources(data_root=str(tmp_path)))


@pytest.mark.parametrize("row", [
    {"STORY": "s", "QUESTION": "q", "OPTION-A": "a", "OPTION-B": "b", "OPTION-C": "c", "OPTION-D": "d", "答案\nANSWER": "C"},
    {"story": "s", "question": "q", "options": ["a", "b", "c", "d"], "answer": "C"},
    {"context": "s", "question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "label": "c"},
])
def test_tombench_hard_layouts_are_detected(tmp_path, row):
    write_jsonl(tmp_path / "tombench-hard" / "test.jsonl", [row])
    (it,) = load("tombench-hard", Sources(data_root=str(tmp_path))).items
    assert (it.story, it.options, it.answer) == ("s", ("a", "b", "c", "d"), 2)


def test_tombench_hard_unknown_layout_lists_columns_and_flags(tmp_path):
    write_jsonl(tmp_path / "h.jsonl", [{"text": "s", "ask": "q", "opts": ["a", "b"], "gold": "A"}])
    with pytest.raises(DataError, match=r"columns found: 'text', 'ask', 'opts', 'gold'.*--fields.story"):
        load("tombench-hard", Sources(tombench_hard=str(tmp_path / "h.jsonl")))
    fields = FieldMap(story="text", question="ask", options="opts", answer="gold")
    (it,) = load("tombench-hard", Sources(tombench_hard=str(tmp_path / "h.jsonl"), fields=fields)).items
    assert it.answer == 0

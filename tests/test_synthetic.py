import re
from collections import Counter

from socialr1.sip import SIPFormat
from socialr1.synthetic import generate_items

ITEMS = generate_items(400, seed=0)


def replay(story: str) -> tuple[str, list[tuple[str, set[str]]]]:
    """Re-read a story from its text alone: the start container and each move's destination with
    who was in the room to see it."""
    present = set(re.match(r"(.+) are in the", story).group(1).replace(" and ", ", ").split(", "))
    start = re.search(r"is in the (\w+)\.", story).group(1)
    moves = []
    for sentence in story.split(". "):
        if m := re.fullmatch(r"(\w+) leaves the \w+\.?", sentence):
            present.discard(m.group(1))
        elif m := re.fullmatch(r"\w+ moves the \w+ to the (\w+)\.?", sentence):
            moves.append((m.group(1), set(present)))
    return start, moves


def expected_answer(story: str, question: str) -> str:
    start, moves = replay(story)
    if question.endswith(" now?"):
        return moves[-1][0]
    minds = set(re.findall(r"[A-Z][a-z]+", question)) - {"Where"}
    seen = [dest for dest, present in moves if minds <= present]
    return seen[-1] if seen else start


def test_deterministic():
    assert generate_items(50, seed=0) == ITEMS[:50]
    assert generate_items(50, seed=1) != ITEMS[:50]


def test_all_kinds_and_orders_present():
    abilities = Counter(it.ability for it in ITEMS)
    for order in ("first", "second", "third", "fourth"):
        assert abilities[f"False Belief: {order} order"] > 20
    assert abilities["True Belief: control"] > 20 and abilities["Reality"] > 20
    assert {it.ability for it in generate_items(20, seed=0, orders=(2,))} <= {
        "False Belief: second order", "True Belief: control", "Reality"
    }


def test_gold_answer_matches_independent_replay():
    for it in ITEMS:
        gold = it.options[it.answer]
        assert gold == expected_answer(it.story, it.question), it
        final = replay(it.story)[1][-1][0]
        if it.ability.startswith("False Belief"):
            assert gold != final, it
        else:
            assert gold == final, it


def test_first_order_false_belief_is_the_place_before_the_move():
    first = [it for it in ITEMS if it.ability == "False Belief: first order"]
    assert first
    for it in first:
        start = re.search(r"is in the (\w+)\.", it.story).group(1)
        assert it.options[it.answer] == start


def test_options_unique_with_one_distractor_and_balanced_letters():
    for it in ITEMS:
        assert len(it.options) == 4 and len(set(it.options)) == 4
        assert sum(f"the {o}" not in it.story and f"a {o}" not in it.story for o in it.options) == 1
    letters = Counter(it.answer_letter for it in ITEMS)
    assert all(70 <= letters[c] <= 130 for c in "ABCD"), letters


def test_gold_completion_has_each_stage_once_in_order():
    fmt = SIPFormat()
    for it in ITEMS:
        completion = fmt.render(it.gold_stages, it.answer_letter)
        starts = [completion.find(fmt.stage_header(i)) for i in range(len(fmt.stages))]
        assert all(completion.count(fmt.stage_header(i)) == 1 for i in range(len(fmt.stages)))
        assert starts == sorted(starts) and starts[0] > 0
        assert completion.endswith(f"{fmt.answer_open}{it.answer_letter}{fmt.answer_close}")
        assert 40 <= len(completion.split()) <= 100
        assert it.options[it.answer] in it.gold_stages[-1]


def test_source_names_seed_and_index():
    assert ITEMS[7].source == "synthetic:seed=0:7"

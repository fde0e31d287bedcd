"""Answer parsing (every rule and its order) and scoring with scripted completions: exact fractions,
gold tracked through option shuffles and majority votes, unparseable replies counted wrong."""

import pytest

from socialr1.answers import parse, well_formed
from socialr1.evalsets import Benchmark, Protocol
from socialr1.evalsets.protocol import expand, orders, score, vote
from socialr1.items import LETTERS, MCQItem

OPTIONS = ("the kitchen", "the garden", "the attic")


@pytest.mark.parametrize("text, index, rule", [
    ("<think>A is tempting</think>\n<Answer>B</Answer>", 1, "tag"),
    ("<Answer>(c)</Answer>", 2, "tag"),
    ("[[B]] I said [[C]]", 2, "brackets"),
    ("It is in the garden.\nAnswer: B", 1, "line"),
    ("The answer is (C).", 2, "line"),
    ("**Answer:** A", 0, "line"),
    ("B", 1, "letter"),
    ("(C)", 2, "letter"),
    ("B. the garden", 1, "letter"),
    ("The Attic.", 2, "text"),
    ("<Answer>B</Answer> [[C]]", 1, "tag"),  # the rules go in order, not by position
    ("<think>Answer: A</think>\n[[C]]", 2, "brackets"),  # nothing inside the reasoning counts
])
def test_each_rule(text, index, rule):
    assert parse(text, OPTIONS) == (index, rule)


@pytest.mark.parametrize("text", [
    "", "I am not sure", "<think>cut off before answering, A", "D", "<Answer>D</Answer>", "the answer is a good one",
    "B. the kitchen", "the",
])
def test_unparseable(text):
    assert parse(text, OPTIONS) == (None, "none")


def test_format_is_separate_from_the_answer():
    sip = "<think>\nCue Encoding: a\nCue Interpretation: b\nGoal Clarification: c\nResponse Generation: d\n</think>\n<Answer>B</Answer>"
    assert well_formed(sip, "sip", 3) and well_formed(sip, "card", 3)
    assert not well_formed(sip.replace("Goal Clarification", "Goal"), "sip", 3)
    assert not well_formed("<think>x</think><Answer>B</Answer> because", "card", 3)
    assert well_formed("it is\nAnswer: C", "cot", 3) and not well_formed("Answer: C, surely", "cot", 3)
    assert well_formed("B", "direct", 3) and not well_formed("B.", "direct", 3)
    assert parse("B.", OPTIONS)[0] == 1  # accuracy still counts it


def items(n: int, n_options: int = 4) -> list[MCQItem]:
    return [MCQItem(f"s{i}", f"q{i}", tuple(f"o{i}-{k}" for k in range(n_options)), (i * 7) % n_options, f"c{i % 2}",
                    f"b:{i}") for i in range(n)]


def run(bench: Benchmark, count: int, reply, aggregate="mean"):
    asks = expand(bench, count, seed=0)
    texts = [reply(k, a) for k, a in enumerate(asks)]
    return score(bench, asks, texts, [1] * len(texts), aggregate, "sip")


def test_all_gold_is_full_marks_under_shuffles():
    bench = Benchmark("b", items(40), Protocol(5, "majority"))
    summary, records = run(bench, 5, lambda k, a: f"<Answer>{a.shown.answer_letter}</Answer>", "majority")
    assert summary["accuracy"] == summary["all_orders_correct"] == 1.0 and summary["parse_failure"] == 0
    assert all(r["correct"] for r in records) and len(records) == 200
    assert len({r["order"] for r in records if r["id"] == "b:0"}) > 1  # the orders really differ


def test_fixed_letter_gives_the_exact_fraction():
    its = items(40)
    bench = Benchmark("b", its)
    summary, _ = run(bench, 1, lambda k, a: "Answer: A")
    assert summary["accuracy"] == sum(it.answer == 0 for it in its) / 40
    shuffled, _ = run(bench, 3, lambda k, a: "[[A]]")
    expected = sum(a.shown.answer == 0 for a in expand(bench, 3, 0)) / 120
    assert shuffled["accuracy"] == pytest.approx(expected) and shuffled["parse_failure"] == 0


def test_majority_tracks_gold_through_the_orders():
    its = items(30)
    bench = Benchmark("b", its, Protocol(5, "majority"))

    def reply(gold_orders: int):
        def answer(k: int, ask) -> str:
            # the first `gold_orders` orders answer gold, the rest the same wrong original option,
            # written as the letter it has in that order
            original = its[ask.item].answer if k % 5 < gold_orders else (its[ask.item].answer + 1) % 4
            return f"<Answer>{LETTERS[ask.order.index(original)]}</Answer>"
        return answer

    three, _ = run(bench, 5, reply(3), "majority")
    two, _ = run(bench, 5, reply(2), "majority")
    mean, _ = run(bench, 5, reply(2), "mean")
    assert (three["accuracy"], two["accuracy"], mean["accuracy"]) == (1.0, 0.0, pytest.approx(0.4))
    assert three["all_orders_correct"] == 0.0
    assert mean["categories"] == {"c0": pytest.approx(0.4), "c1": pytest.approx(0.4)}


def test_unparseable_counts_wrong():
    bench = Benchmark("b", items(10))
    summary, records = run(bench, 1, lambda k, a: "I would rather not say")
    assert summary["accuracy"] == 0 and summary["parse_failure"] == 1 and summary["format"] == 0
    assert all(r["parsed"] is None and not r["correct"] for r in records)
    assert vote([None, None, 1]) is None and vote([2, 1, 1, 2]) == 2


def test_fixed_orders_come_first():
    it = items(1, 6)[0]
    fixed = ((0, 1, 2, 3, 4, 5), (5, 4, 3, 2, 1, 0))
    got = orders(it, 3, fixed, seed=0)
    assert got[:2] == list(fixed) and sorted(got[2]) == list(range(6))
    assert orders(it, 1, fixed, 0) == [tuple(range(6))]

"""A benchmark's protocol made concrete: every item asked in one or more option orders, then the
answers parsed, mapped back to the original options and combined per item (mean over orders, or a
majority vote), with the share of items answered right under every order."""

from collections import Counter
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from socialr1.answers import RULES, Mode, parse, well_formed
from socialr1.evalsets.common import Benchmark, seeded_order
from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat

Aggregate = Literal["mean", "majority"]


@dataclass(frozen=True)
class Ask:
    item: int  # index into the benchmark's items
    k: int  # which of the item's orders
    order: tuple[int, ...]  # shown option j is original option order[j]
    shown: MCQItem  # the item as asked: options in this order, answer remapped


def orders(item: MCQItem, count: int, fixed: Sequence[tuple[int, ...]], seed: int) -> list[tuple[int, ...]]:
    """`count` option orders: the original alone when 1, else the authors' fixed orders (those that
    fit the item's option count) first, then seeded shuffles keyed by the item's source."""
    n = len(item.options)
    if count == 1:
        return [tuple(range(n))]
    chosen = [tuple(o) for o in fixed if sorted(o) == list(range(n))][:count]
    return chosen + [tuple(seeded_order(n, f"{seed}:{item.source}:{k}")) for k in range(len(chosen), count)]


def expand(bench: Benchmark, count: int, seed: int) -> list[Ask]:
    asks = []
    for i, item in enumerate(bench.items):
        for k, order in enumerate(orders(item, count, bench.protocol.fixed, seed)):
            shown = replace(item, options=tuple(item.options[j] for j in order), answer=order.index(item.answer))
            asks.append(Ask(i, k, order, shown))
    return asks


def vote(answers: Sequence[int | None]) -> int | None:
    """The most frequent answer; a tie goes to the one given first. No answer is a vote too, so an
    item mostly unparsed counts as wrong."""
    counts = Counter(answers)
    return max(counts, key=lambda a: (counts[a], -answers.index(a)))


def score(
    bench: Benchmark,
    asks: Sequence[Ask],
    completions: Sequence[str],
    lengths: Sequence[int],
    aggregate: Aggregate,
    mode: Mode,
    fmt: SIPFormat = SIPFormat(),
    cut: Sequence[bool] = (),
) -> tuple[dict, list[dict]]:
    """-> (summary, one prediction record per completion). Accuracy is per item: the mean over its
    orders, or 1 when its majority answer is the gold. `cut`: per completion, whether it stopped at
    the token limit (empty: none did)."""
    cut = list(cut) or [False] * len(asks)
    per_item: dict[int, list[int | None]] = {}
    records, rules, formatted = [], Counter(), 0
    for ask, text, was_cut in zip(asks, completions, cut):
        chosen, rule = parse(text, ask.shown.options, fmt)
        original = None if chosen is None else ask.order[chosen]
        per_item.setdefault(ask.item, []).append(original)
        rules[rule] += 1
        ok_format = well_formed(text, mode, len(ask.shown.options), fmt)
        formatted += ok_format
        records.append({
            "benchmark": bench.name, "id": ask.shown.source, "category": ask.shown.ability,
            "k": ask.k, "order": "".join(LETTERS[j] for j in ask.order), "completion": text,
            "parsed": None if chosen is None else LETTERS[chosen], "rule": rule,
            "gold": ask.shown.answer_letter, "correct": chosen == ask.shown.answer, "format": ok_format,
            "truncated": was_cut,
        })
    item_scores, all_right, by_category = {}, 0, {}
    for i, answers in per_item.items():
        gold = bench.items[i].answer
        if aggregate == "majority":
            item_scores[i] = float(vote(answers) == gold)
        else:
            item_scores[i] = sum(a == gold for a in answers) / len(answers)
        all_right += all(a == gold for a in answers)
        by_category.setdefault(bench.items[i].ability, []).append(item_scores[i])
    n_items, n_done = max(len(item_scores), 1), max(len(asks), 1)
    summary = {
        "items": len(item_scores),
        "completions": len(asks),
        "orders": len(asks) // max(len(item_scores), 1),
        "aggregate": aggregate,
        "accuracy": sum(item_scores.values()) / n_items,
        "all_orders_correct": all_right / n_items,
        "parse_failure": rules["none"] / n_done,
        "format": formatted / n_done,
        "parsed_by": {r: rules[r] / n_done for r in (*RULES, "none") if rules[r]},
        "mean_completion_tokens": sum(lengths) / n_done,
        "truncated": sum(cut) / n_done,
        "categories": {c: sum(v) / len(v) for c, v in sorted(by_category.items()) if c},
        "note": bench.note,
        "subset": bench.subset,
    }
    return summary, records


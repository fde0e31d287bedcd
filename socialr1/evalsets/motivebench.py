"""MotiveBench (ACL Findings 2025): 200 records x 3 questions (motivation, behaviour, both), 6
lettered options each, gold letter. Its authors ask every item under 6 fixed option orders and
average the accuracy over them."""

from socialr1.data import DataError
from socialr1.evalsets.common import Benchmark, Protocol, Sources, field_of, mcq, read_json

TASKS = (
    ("motivation", "Motivation Reasoning Question"),
    ("behavior", "Behavior Reasoning Question"),
    ("motivation+behavior", "Motivation and Behavior Reasoning Question"),
)
# client_eval.py's order_list (1-based): shown option j is original option order[j]
ORDERS = ((1, 2, 3, 4, 5, 6), (6, 5, 4, 3, 2, 1), (3, 1, 6, 5, 4, 2), (2, 3, 5, 6, 1, 4), (5, 4, 1, 2, 6, 3), (4, 6, 2, 1, 3, 5))


def load(src: Sources) -> Benchmark:
    folder = src.folder("motivebench")
    items = []
    for part in ("Persona", "Amazon", "Blog"):
        for r, record in enumerate(read_json(folder / part / f"{part}_questions.json")):
            for t, (task, key) in enumerate(TASKS, start=1):
                where = f"motivebench/{part}:{r}:{t}"
                raw = field_of(record, f"Options {t}", where)
                options = [o.split(". ", 1)[1] if o[:1].isalpha() and o[1:3] == ". " else o for o in raw]
                gold = str(field_of(record, f"Correct Answer {t}", where)).strip()
                if len(gold) != 1 or not "A" <= gold < chr(ord("A") + len(options)):
                    raise DataError(f"{where}: field 'Correct Answer {t}': {gold!r} is not an option letter")
                items.append(mcq("", field_of(record, key, where), options, ord(gold) - ord("A"), task, where))
    orders = tuple(tuple(i - 1 for i in o) for o in ORDERS)
    return Benchmark("motivebench", items, Protocol(6, "mean", orders), "Persona + Amazon + Blog")

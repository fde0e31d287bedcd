"""BigToM (Gandhi et al., NeurIPS 2023): the 24 condition files the authors' generator writes
(initial belief shown or not x forward belief / forward action / backward belief x true belief,
false belief, true control, false control), 200 two-option items each; gold is column 3. Options
are shuffled as the authors' evaluator does (one `random.seed(0)` stream per file).
`1_percept_to_belief_true_belief` is left out: its gold does not follow from its story."""

import csv
import random

from socialr1.data import DataError
from socialr1.evalsets.common import Benchmark, Sources, mcq

SKIP = {"1_percept_to_belief_true_belief"}


def load(src: Sources) -> Benchmark:
    folder = src.folder("bigtom") / "conditions"
    items = []
    for cond in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP):
        rng = random.Random(0)
        with open(cond / "stories.csv", newline="", encoding="utf-8") as f:
            for r, row in enumerate(csv.reader(f, delimiter=";", quoting=csv.QUOTE_NONE)):
                where = f"bigtom/{cond.name}:{r}"
                if len(row) != 4:
                    raise DataError(f"{where}: {len(row)} fields, expected 4 (story;question;correct;wrong)")
                options = [row[2], row[3]]
                rng.shuffle(options)
                category = cond.name.split("_", 1)[1]  # e.g. forward_belief_false_belief
                items.append(mcq(row[0], row[1], options, options.index(row[2]), category, where))
    return Benchmark("bigtom", items, note="24 conditions (no percept_to_belief)")

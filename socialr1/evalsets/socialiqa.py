"""SocialIQA dev (Sap et al., 2019): 1,954 items, 3 options. Either the leaderboard layout
(`dev.jsonl` + `dev-labels.lst`, labels 1-3 by line) or the hub's (`allenai/social_i_qa`: a `label`
field, "1"-"3", in each row)."""

from socialr1.data import DataError
from socialr1.evalsets.common import Benchmark, Sources, field_of, mcq, read_jsonl


def load(src: Sources) -> Benchmark:
    folder = src.folder("socialiqa")
    rows = read_jsonl(folder / "dev.jsonl")
    labels_file = folder / "dev-labels.lst"
    if labels_file.exists():
        labels = labels_file.read_text().split()
        if len(labels) != len(rows):
            raise DataError(f"{labels_file.name}: {len(labels)} labels for {len(rows)} rows of dev.jsonl")
    else:
        labels = [field_of(r, "label", f"dev.jsonl:{i}") for i, r in enumerate(rows, start=1)]
    items = []
    for i, (row, label) in enumerate(zip(rows, labels), start=1):
        where = f"socialiqa/dev.jsonl:{i}"
        if str(label).strip() not in ("1", "2", "3"):
            raise DataError(f"{where}: label {label!r}: expected 1, 2 or 3")
        options = [field_of(row, f"answer{x}", where) for x in "ABC"]
        items.append(mcq(field_of(row, "context", where), field_of(row, "question", where), options,
                         int(label) - 1, "", where))
    return Benchmark("socialiqa", items, note="dev split")

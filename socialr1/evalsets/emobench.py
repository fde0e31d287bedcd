"""EmoBench (Sabour et al., ACL 2024): Emotional Understanding (EU: an emotion and a cause question
per scenario, 400 items per language) and Emotional Application (EA: 200). Gold as option text;
questions and option order as the authors' English prompts (also used for `--lang zh` scenarios)."""

from socialr1.evalsets.common import Benchmark, Sources, field_of, index_of, mcq, read_jsonl


def load(src: Sources) -> Benchmark:
    folder = src.folder("emobench")
    items = []
    for i, row in enumerate(read_jsonl(folder / "EU.jsonl"), start=1):
        if row.get("language") != src.lang:
            continue
        where, subject = f"emobench/EU.jsonl:{i}", field_of(row, "subject", f"EU.jsonl:{i}")
        scenario = field_of(row, "scenario", where)
        for kind, question in (("emotion", f"What emotion(s) would {subject} ultimately feel in this situation?"),
                               ("cause", f"Why would {subject} feel these emotions in this situation?")):
            options = field_of(row, f"{kind}_choices", where)
            gold = index_of(options, field_of(row, f"{kind}_label", where), f"{where}: {kind}_label")
            items.append(mcq(scenario, question, options, gold, f"EU {kind}", f"{where}:{kind}"))
    for i, row in enumerate(read_jsonl(folder / "EA.jsonl"), start=1):
        if row.get("language") != src.lang:
            continue
        where = f"emobench/EA.jsonl:{i}"
        question = (f"In this scenario, what is the most effective {field_of(row, 'question type', where)} "
                    f"for {field_of(row, 'subject', where)}?")
        options = field_of(row, "choices", where)
        gold = index_of(options, field_of(row, "label", where), f"{where}: label")
        items.append(mcq(field_of(row, "scenario", where), question, options, gold, "EA", where))
    return Benchmark("emobench", items, note=f"EU (emotion, cause) + EA, {src.lang}")

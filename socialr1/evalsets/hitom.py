"""Hi-ToM (He et al., Findings of EMNLP 2023): 1,200 records, half vanilla prompting (VP), half
chain-of-thought (CoTP); 15 options in one string; gold as option text. One half is asked (VP by
default); the instruction line VP stories start with is removed, our prompt gives its own."""

from socialr1.evalsets.common import Benchmark, Sources, field_of, index_of, mcq, read_json

INSTRUCTION = "Read the following story and answer the multiple-choice question."


def load(src: Sources) -> Benchmark:
    records = field_of(read_json(src.folder("hitom") / "Hi-ToM_data.json"), "data", "Hi-ToM_data.json")
    items = []
    for i, rec in enumerate(records):
        if rec.get("prompting_type") != src.hitom_prompting:
            continue
        where = f"hitom/Hi-ToM_data.json:{i}"
        story = field_of(rec, "story", where)
        if story.startswith(INSTRUCTION):
            story = story.split("\n", 1)[1]
        options = [c.split(". ", 1)[1] for c in field_of(rec, "choices", where).split(", ")]
        gold = index_of(options, field_of(rec, "answer", where), f"{where}: answer")
        order = field_of(rec, "question_order", where)
        items.append(mcq(story.rstrip("*\n "), field_of(rec, "question", where), options, gold, f"order {order}", where))
    return Benchmark("hitom", items, note=f"{src.hitom_prompting} half")

"""TactfulToM (Liu et al., EMNLP 2025): 100 conversations with white lies. Asked here: the lists its
authors ask as multiple choice, each with options = the correct answer + the wrong ones in a seeded
order: comprehensionQA (Yes / No), fact_reasonQA, fact_truthQA, beliefQAs, lieabilityQAs (2,482
items). Not asked: justificationQA (not in the authors' runner), the name-list questions (scored as
set equality) and the yes/no binary lists. Context: `full_context`, as the authors' runner."""

from socialr1.evalsets.common import Benchmark, Sources, field_of, mcq, read_json, seeded_order

LISTS = ("comprehensionQA", "fact_reasonQA", "fact_truthQA", "beliefQAs", "lieabilityQAs")


def load(src: Sources) -> Benchmark:
    folder = src.folder("tactfultom") / "final_set"
    items = []
    for k in range(5):
        for r, conv in enumerate(read_json(folder / f"Tactful_conv_set_{k}.json")):
            context = field_of(conv, "full_context", f"tactfultom/set_{k}:{r}")
            for name in LISTS:
                for q in conv.get(name) or []:
                    where = f"tactfultom/{q.get('q_id', f'set_{k}:{r}:{name}')}"
                    wrong = field_of(q, "wrong_answer", where)
                    answers = [field_of(q, "correct_answer", where)] + ([wrong] if isinstance(wrong, str) else list(wrong))
                    order = seeded_order(len(answers), f"{src.seed}:{where}")
                    items.append(mcq(context, field_of(q, "question", where), [answers[i] for i in order],
                                     order.index(0), name, where))
    return Benchmark("tactfultom", items, note="lists " + ", ".join(LISTS))

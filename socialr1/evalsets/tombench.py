"""ToMBench (Chen et al., ACL 2024): 2,860 items in 20 task files, English and Chinese fields, gold
letter. Its authors ask each item under 5 option shuffles and take the majority vote."""

from dataclasses import replace

from socialr1.data import FieldMap, load_items
from socialr1.evalsets.common import Benchmark, Protocol, Sources

FIELDS = {
    "en": FieldMap(),
    "zh": FieldMap(story="故事", question="问题", options="选项"),
}


def load(src: Sources) -> Benchmark:
    items = load_items(str(src.folder("tombench")), FIELDS[src.lang])
    # "Belief: Location false beliefs" -> "Belief"; the files spell one category two ways
    items = [replace(it, ability=it.ability.split(":")[0].strip().title()) for it in items]
    return Benchmark("tombench", items, Protocol(5, "majority"), f"{src.lang} fields, 20 task files")

"""ToMBench-Hard (the Social-R1 authors' adversarial set, hub `Jincenzi/ToMBench_Hard`, 800 items:
700 train / 100 test, 4 options, gold letter), from the hub or a local CSV/JSONL file or folder.
Its columns are unpublished, so the common layouts are detected; `--fields.*` overrides detection.
Never evaluate a model on the split it was trained on."""

from pathlib import Path

from socialr1.data import DataError, FieldMap, table_items
from socialr1.evalsets.common import Benchmark, Sources, local_or_hub, tables

STORY = ("STORY", "story", "Story", "context", "Context", "scenario")
QUESTION = ("QUESTION", "question", "Question")
OPTION_LISTS = ("options", "choices", "Options", "OPTIONS")
OPTION_PREFIXES = ("OPTION-", "OPTION_", "option_", "Option ", "option", "")
ANSWER = ("答案\nANSWER", "ANSWER", "answer", "Answer", "label", "answerKey", "gold", "correct_answer")
ABILITY = ("能力\nABILITY", "ABILITY", "ability", "category", "task")


def detect(columns: list[str], label: str) -> FieldMap:
    """A FieldMap for ToMBench-style fields, an options list, or one field per lettered option."""
    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in columns), None)

    options = first(OPTION_LISTS) or next(
        (p for p in OPTION_PREFIXES if f"{p}A" in columns and f"{p}B" in columns), None
    )
    story, question, answer = first(STORY), first(QUESTION), first(ANSWER)
    if None in (story, question, answer, options):
        raise DataError(
            f"{label}: unknown column layout; columns found: {', '.join(repr(c) for c in columns)}. "
            "Map them with --fields.story, --fields.question, --fields.options (a list field, or the "
            "prefix of one field per option letter), --fields.answer and --fields.ability"
        )
    return FieldMap(story=story, question=question, options=options, answer=answer,
                    ability=first(ABILITY) or "")


def load(src: Sources) -> Benchmark:
    source = local_or_hub(src, "tombench-hard", src.tombench_hard, Sources.tombench_hard)
    items = []
    for label, table in tables(source, src.tombench_hard_split, "tombench-hard"):
        fields = src.fields if src.fields != FieldMap() else detect(table.column_names, label)
        items += table_items(table, fields, label)
    hub = source == src.tombench_hard and not Path(source).expanduser().exists()
    return Benchmark("tombench-hard", items, note=f"{source} [{src.tombench_hard_split}]" if hub else source)

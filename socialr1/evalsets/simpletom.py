"""SimpleToM (Gu et al., 2024; hub `allenai/SimpleToM`): short stories with three question kinds, one
hub config each (mental-state-qa, behavior-qa, judgment-qa), 2 options. Rows: `story`, `question`,
`choices` {label, text}, `answerKey` (a label). From the hub, or a local folder with one file per
config named after it (e.g. behavior-qa.jsonl)."""

from pathlib import Path
from typing import Any

from socialr1.data import BUILDERS, DataError
from socialr1.evalsets.common import Benchmark, Sources, field_of, local_or_hub, mcq, tables
from socialr1.items import MCQItem

CONFIGS = ("mental-state-qa", "behavior-qa", "judgment-qa")


def load(src: Sources) -> Benchmark:
    source = local_or_hub(src, "simpletom", src.simpletom, Sources.simpletom)
    folder = Path(source).expanduser()
    items = []
    for config in CONFIGS:
        if folder.is_dir():
            found = [t for f in sorted(folder.iterdir()) if f.stem == config and f.suffix in BUILDERS
                     for t in tables(str(f), "test", "simpletom")]
        else:
            found = tables(source, "test", "simpletom", config)
        for label, table in found:
            items += [_item(row, config, f"{label}:{r}") for r, row in enumerate(table, start=1)]
    if not items:
        raise DataError(f"simpletom: no rows in {source} (expected files named {', '.join(CONFIGS)})")
    return Benchmark("simpletom", items, note=f"{source}: {', '.join(CONFIGS)}")


def _item(row: dict[str, Any], config: str, where: str) -> MCQItem:
    choices = field_of(row, "choices", where)
    labels, texts = field_of(choices, "label", f"{where}: choices"), field_of(choices, "text", f"{where}: choices")
    key = str(field_of(row, "answerKey", where)).strip()
    if key not in labels:
        raise DataError(f"{where}: field 'answerKey': {key!r} is not one of the choice labels {labels}")
    return mcq(field_of(row, "story", where), field_of(row, "question", where), texts, labels.index(key), config, where)

"""Load multiple-choice items with `datasets`: a Hub dataset name, a local JSONL/JSON/CSV/Parquet
file, or a folder of such files. Defaults read ToMBench's English fields."""

import functools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets

from socialr1.hub import hub_unavailable
from socialr1.items import LETTERS, MCQItem

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
LETTER_RE = re.compile(r"\(?([A-Za-z])\)?[.:]?")  # "A", "a", "A.", "(A)": ToMBench has one "A. "


class DataError(ValueError):
    """A source that cannot be loaded or a row that cannot become an MCQItem."""


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a row hold each part of an item. Defaults are ToMBench's English fields."""

    story: str = "STORY"
    """Field with the story (may be empty, for question-only items)."""
    question: str = "QUESTION"
    """Field with the question (must be non-empty)."""
    options: str = "OPTION-"
    """A field holding all options as a list, or, when no field has this name, the prefix of one
    field per option: prefix + A, B, C, ... (trailing missing or empty options are dropped)."""
    answer: str = "答案\nANSWER"
    """Field with the gold answer (ToMBench's name has a newline in it)."""
    answer_format: Literal["auto", "letter", "text", "index"] = "auto"
    """How the answer is written: an option letter, the option's text, or a 0-based index. auto:
    an integer is an index; a string is a letter if it is one ("B", "b", "B.", "(B)"), else the text
    of exactly one option, else a number taken as an index."""
    ability: str = "能力\nABILITY"
    """Field with the ability label, for per-ability scores; rows without it get ''."""


def load_items(
    source: str, fields: FieldMap = FieldMap(), split: str = "train", limit: int | None = None
) -> list[MCQItem]:
    """Items from a Hub dataset name, a local file, or a folder of files (all supported files,
    sorted). `split` applies to Hub datasets; a local file is one split. Each item's source is
    'file:row' with rows counted from 1."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    items: list[MCQItem] = []
    for label, table in load_tables(source, split):
        items += table_items(table, fields, label)
        if limit is not None and len(items) >= limit:
            return items[:limit]
    if not items:
        raise DataError(f"{source}: no items in it")
    return items


def load_tables(source: str, split: str = "train") -> list[tuple[str, datasets.Dataset]]:
    """(label, table) of a Hub dataset, a local file, or every supported file of a folder (sorted)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in BUILDERS)
        if not files:
            raise DataError(f"{path}: no {'/'.join(BUILDERS)} files in this folder")
        return [(f"{path.name}/{f.name}", _load_file(f, f"{path.name}/{f.name}")) for f in files]
    if path.is_file():
        return [(path.name, _load_file(path, path.name))]
    if path.suffix in BUILDERS or source.startswith((".", "/", "~")):
        raise DataError(f"{source}: no such file or folder")
    return [(f"{source}[{split}]", load_hub(source, split))]


def table_items(table: datasets.Dataset, fields: FieldMap, label: str) -> list[MCQItem]:
    list_options = fields.options in table.column_names
    if not list_options and f"{fields.options}A" not in table.column_names:
        raise DataError(
            f"{label}: no field {fields.options!r} (list of options) "
            f"nor {fields.options + 'A'!r} (one field per option); set the option field"
        )
    return [_item(record, fields, list_options, f"{label}:{row}") for row, record in enumerate(table, start=1)]


def _load_file(path: Path, label: str) -> datasets.Dataset:
    if path.suffix not in BUILDERS:
        raise DataError(f"{label}: unsupported file type; use one of {', '.join(BUILDERS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{label}: empty file")
    try:
        return datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types; the user needs the file, not the stack
        raise DataError(f"{label}: could not be read as {BUILDERS[path.suffix]}: {e}") from e


def load_hub(name: str, split: str, config: str | None = None) -> datasets.Dataset:
    reason = hub_unavailable()
    if reason:
        raise DataError(_hub_help(name, split, reason))
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # not found, offline, gated, bad split: the same advice for each
        raise DataError(_hub_help(name, split, f"{type(e).__name__}: {e}")) from e


def _hub_help(name: str, split: str, reason: str) -> str:
    return (
        f"{name!r} is not a local file or folder and could not be loaded from the Hugging Face Hub "
        f"({reason}). On a machine with internet, save it to a file, e.g. python -c \"import "
        f"datasets; datasets.load_dataset('{name}', split='{split}').to_json('data.jsonl')\", "
        f"copy it here and pass the local file or folder instead (e.g. --data.path /local/dir)."
    )


def _item(record: dict[str, Any], fields: FieldMap, list_options: bool, where: str) -> MCQItem:
    story = _required(record, fields.story, where, allow_empty=True)
    question = _required(record, fields.question, where, allow_empty=False)
    read_options = _list_options if list_options else _prefix_options
    options = read_options(record, fields.options, where)
    answer = _answer(record.get(fields.answer), options, fields, where)
    ability = _text(record.get(fields.ability)) or ""
    return MCQItem(story, question, options, answer, ability, source=where)


def _error(where: str, field: str, problem: str) -> DataError:
    label, row = where.rsplit(":", 1)
    return DataError(f"{label}: row {row}: field {field!r}: {problem}")


def _text(value: Any) -> str | None:
    """A cell as stripped text; None when missing (None, or NaN as pandas writes empty cells)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip()


def _required(record: dict[str, Any], field: str, where: str, allow_empty: bool) -> str:
    if field not in record:
        raise _error(where, field, "no such field")
    text = _text(record[field])
    if text is None or (not text and not allow_empty):
        raise _error(where, field, "missing")
    return text


def _unlabel(text: str, letter: str) -> str:
    # some sources write "A. Yes" as option A's text; the prompt adds its own labels
    return re.sub(rf"^\(?{letter}[.)]\s+", "", text)


def _prefix_options(record: dict[str, Any], prefix: str, where: str) -> tuple[str, ...]:
    texts = [_text(record.get(prefix + letter)) for letter in LETTERS]
    while texts and not texts[-1]:
        texts.pop()
    for i in range(max(len(texts), 2)):
        if i >= len(texts):
            raise _error(where, prefix + LETTERS[i], "missing (need at least 2 options)")
        if not texts[i]:
            raise _error(where, prefix + LETTERS[i], "missing")
    return tuple(_unlabel(t, LETTERS[i]) for i, t in enumerate(texts))


def _list_options(record: dict[str, Any], field: str, where: str) -> tuple[str, ...]:
    value = record.get(field)
    if not isinstance(value, (list, tuple)):
        raise _error(where, field, f"expected a list of options, got {type(value).__name__}")
    if not 2 <= len(value) <= len(LETTERS):
        raise _error(where, field, f"{len(value)} options; need 2 to {len(LETTERS)}")
    texts = [_text(v) for v in value]
    for i, text in enumerate(texts):
        if not text:
            raise _error(where, field, f"option {LETTERS[i]} is empty")
    return tuple(_unlabel(t, LETTERS[i]) for i, t in enumerate(texts))


def _answer(value: Any, options: tuple[str, ...], fields: FieldMap, where: str) -> int:
    fmt, field, n = fields.answer_format, fields.answer, len(options)
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        raise _error(where, field, "missing")
    text = str(value).strip()
    if fmt == "auto":
        if isinstance(value, int):
            fmt = "index"
        elif LETTER_RE.fullmatch(text):
            fmt = "letter"
        elif sum(o.casefold() == text.casefold() for o in options) == 1:
            fmt = "text"
        elif text.isdigit():
            fmt = "index"
        else:
            raise _error(where, field, f"{text!r} is not an option letter, option text or index")
    if fmt == "letter":
        match = LETTER_RE.fullmatch(text)
        if not match:
            raise _error(where, field, f"{text!r} is not an option letter")
        index = LETTERS.index(match.group(1).upper())
        if index >= n:
            raise _error(where, field, f"letter {match.group(1)!r} out of range A-{LETTERS[n - 1]}")
        return index
    if fmt == "text":
        hits = [i for i, o in enumerate(options) if o.casefold() == text.casefold()]
        if len(hits) != 1:
            raise _error(where, field, f"{text!r} matches {len(hits)} options, need exactly 1")
        return hits[0]
    if not text.lstrip("-").isdigit() or not 0 <= int(text) < n:
        raise _error(where, field, f"index {text!r} out of range 0-{n - 1}")
    return int(text)


def rank_share(n: int, per_step: int, step: int, rank: int, world_size: int, seed: int) -> list[int]:
    """Indices (into n records) of this rank's share of a step's batch: a slice of a seeded
    permutation per epoch. The global batch is the same whatever the number of ranks, and a
    function of (seed, step) alone, so a resumed run reads what the uninterrupted one read."""
    per_rank = per_step // world_size
    first = step * per_step + rank * per_rank
    return [_epoch_order(n, seed, k // n)[k % n] for k in range(first, first + per_rank)]


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed + epoch).shuffle(order)
    return order

"""What every benchmark adapter shares: the Benchmark record, its protocol, the options that pick
sources and languages, and small readers that fail with one line naming the file and record."""

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import datasets

from socialr1.data import DataError, FieldMap, load_tables
from socialr1.hub import hub_unavailable
from socialr1.items import MCQItem

DATA_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the checkout


class Missing(DataError):
    """A benchmark whose data is not here (listed as missing by --suite, an error when named)."""


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is asked: in how many option orders, and how the answers are combined."""

    orders: int = 1
    aggregate: Literal["mean", "majority"] = "mean"
    fixed: tuple[tuple[int, ...], ...] = ()  # the authors' option orders (0-based), used first


@dataclass
class Benchmark:
    name: str
    items: list[MCQItem]
    protocol: Protocol = Protocol()
    note: str = ""  # what of the source is used, shown in the report
    subset: str = ""  # how the items were cut down from the whole benchmark, e.g. "seeded 200 of 600"


@dataclass
class Sources:
    """Where benchmarks come from and which part of each is asked."""

    data_root: str = str(DATA_ROOT)
    """Folder holding one folder per benchmark (tombench/, hitom/, ...), as ../shared/data."""
    lang: Literal["en", "zh"] = "en"
    """Language of ToMBench and EmoBench."""
    hitom_prompting: Literal["VP", "CoTP"] = "VP"
    """Which half of Hi-ToM (vanilla or chain-of-thought prompting records; 600 items each)."""
    tombench_hard: str = "Jincenzi/ToMBench_Hard"
    """ToMBench-Hard: hub dataset name, or a local CSV/JSONL file or folder (default: the hub, unless
    <data-root>/tombench-hard/ exists)."""
    tombench_hard_split: str = "test"
    """Split of ToMBench-Hard on the hub."""
    simpletom: str = "allenai/SimpleToM"
    """SimpleToM: hub dataset name, or a local folder with one file per config
    (mental-state-qa, behavior-qa, judgment-qa; default: the hub unless <data-root>/simpletom/ exists)."""
    fields: FieldMap = field(default_factory=FieldMap)
    """Field mapping of the generic --data path; for tombench-hard, set to override layout detection."""
    seed: int = 0
    """Seed of option shuffles and of seeded subsets (`hitom:200`)."""

    def folder(self, name: str) -> Path:
        path = Path(self.data_root).expanduser() / name
        if not path.is_dir():
            raise Missing(f"{name}: no folder {path} (--data-root holds one folder per benchmark)")
        return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: could not be read as JSON: {e}") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"{path.name}: line {line_no}: not JSON: {e}") from e
    return rows


def field_of(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record:
        raise DataError(f"{where}: field {name!r}: missing")
    return record[name]


def index_of(options: Sequence[str], gold: str, where: str) -> int:
    """The gold given as option text -> its index (exactly one option must match)."""
    hits = [i for i, o in enumerate(options) if o.strip() == str(gold).strip()]
    if len(hits) != 1:
        raise DataError(f"{where}: gold {gold!r} matches {len(hits)} options, need exactly 1")
    return hits[0]


def seeded_order(n: int, key: str) -> list[int]:
    """A fixed permutation of range(n) for `key` (string seeds hash the same on every run)."""
    order = list(range(n))
    random.Random(key).shuffle(order)
    return order


def mcq(story: str, question: str, options: Sequence[str], answer: int, ability: str, source: str) -> MCQItem:
    return MCQItem(story.strip(), question.strip(), tuple(o.strip() for o in options), answer, ability, source)


def local_or_hub(src: Sources, name: str, given: str, default: str) -> str:
    """A hub-only benchmark's source: <data-root>/<name>/ when it exists and no other was given."""
    local = Path(src.data_root).expanduser() / name
    return str(local) if given == default and local.is_dir() else given


def tables(source: str, split: str, name: str, config: str | None = None) -> list[tuple[str, datasets.Dataset]]:
    """load_tables, except that a hub dataset that cannot be loaded is Missing (listed, not fatal, in
    a suite), with advice naming eval.py's option for benchmark `name`'s local copy (--<name>)."""
    if Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return load_tables(source, split)
    reason = hub_unavailable()
    if reason is None:
        try:
            return [(f"{source}[{config or split}]", datasets.load_dataset(source, config, split=split))]
        except Exception as e:  # not found, offline, gated, bad split: the same advice for each
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
    call = f"datasets.load_dataset('{source}', {f'{config!r}, ' if config else ''}split='{split}')"
    raise Missing(
        f"hub dataset {source} could not be loaded; {reason}; on a machine with internet save it: python -c "
        f"\"import datasets; {call}.to_json('{name}/{config or split}.jsonl')\"{' for each config' if config else ''}, "
        f"copy the folder here and pass --{name} {name}"
    )

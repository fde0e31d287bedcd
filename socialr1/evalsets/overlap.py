"""Which evaluation benchmarks hold a set of training items, by content: the story and question,
normalised (case, punctuation, spacing), hashed. A benchmark copied under another name or format is
still found. Only benchmarks whose data is in the data root are read, never the hub; with no data
there, nothing is found and nothing is said."""

import hashlib
import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import datasets

from socialr1.data import DataError
from socialr1.evalsets import ADAPTERS
from socialr1.evalsets.common import DATA_ROOT, Sources
from socialr1.items import MCQItem

# Every form of a benchmark an item could have been copied from: both languages, both Hi-ToM halves.
VARIANTS = {"tombench": ({"lang": "en"}, {"lang": "zh"}), "emobench": ({"lang": "en"}, {"lang": "zh"}),
            "hitom": ({"hitom_prompting": "VP"}, {"hitom_prompting": "CoTP"})}


def fingerprint(item: MCQItem) -> bytes:
    """16 bytes naming the item's story and question, blind to case, punctuation and spacing."""
    text = re.sub(r"\W+", " ", f"{item.story}\n{item.question}".casefold()).strip()
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def benchmark_items(data_root: str) -> Iterator[tuple[str, list[MCQItem]]]:
    """(name, items) of every known benchmark whose folder is in `data_root`, in each variant."""
    sources = Sources(data_root=data_root)
    for name, adapter in ADAPTERS.items():
        if not (Path(data_root).expanduser() / name).is_dir():
            continue  # absent, or on the hub only: never downloaded for this check
        for variant in VARIANTS.get(name, ({},)):
            try:
                yield name, adapter.load(replace(sources, **variant)).items
            except DataError:  # a part that is not here or does not read: nothing to match against
                continue


@lru_cache(maxsize=2)
def benchmark_prints(data_root: str) -> dict[str, frozenset[bytes]]:
    """{benchmark: the fingerprints of its items}, read once per process (a few seconds, quietly)."""
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        seen: dict[str, set[bytes]] = {}
        for name, found in benchmark_items(data_root):
            seen.setdefault(name, set()).update(fingerprint(it) for it in found)
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return {name: frozenset(prints) for name, prints in seen.items()}


def benchmark_overlap(items: Iterable[MCQItem], data_root: str = str(DATA_ROOT)) -> dict[str, int]:
    """{benchmark: how many of `items` it holds}, only benchmarks holding at least one; {} when the
    benchmark data is absent."""
    mine = [fingerprint(it) for it in items]
    counts = {name: sum(f in prints for f in mine) for name, prints in benchmark_prints(data_root).items()}
    return {name: n for name, n in counts.items() if n}


def warning(overlap: dict[str, int], total: int) -> str | None:
    """The start-up warning for `benchmark_overlap`'s result, or None when there is no overlap."""
    if not overlap:
        return None
    found = ", ".join(f"{n} of {total} in {name}" for name, n in sorted(overlap.items(), key=lambda kv: -kv[1]))
    return (f"warning: training items are evaluation benchmark items ({found}); accuracy on those benchmarks "
            "will not measure generalisation: train on other data")

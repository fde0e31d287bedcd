"""Benchmark adapters: one module per benchmark reads its native files into MCQItems with its
authors' protocol. `load("hitom:200", sources)` gives a benchmark, or a fixed seeded subset of it."""

import random
from pathlib import Path
from types import ModuleType

from socialr1.data import DataError, FieldMap, load_items
from socialr1.evalsets import (
    bigtom, emobench, hitom, motivebench, opentom, simpletom, socialiqa, tactfultom, tombench, tombench_hard,
)
from socialr1.evalsets.common import Benchmark, Missing, Protocol, Sources
from socialr1.items import MCQItem

ADAPTERS: dict[str, ModuleType] = {
    "tombench": tombench,
    "tombench-hard": tombench_hard,
    "socialiqa": socialiqa,
    "simpletom": simpletom,
    "emobench": emobench,
    "motivebench": motivebench,
    "hitom": hitom,
    "tactfultom": tactfultom,
    "bigtom": bigtom,
    "opentom": opentom,
}
# The eight benchmarks of Social-R1's results table, whose mean is its "Overall".
SUITES = {"social-r1": ("tombench", "tombench-hard", "socialiqa", "simpletom", "emobench", "motivebench", "hitom", "tactfultom")}

__all__ = ["ADAPTERS", "SUITES", "Benchmark", "Missing", "Protocol", "Sources", "benchmark_overlap", "eval_items",
           "is_benchmark", "load"]


def is_benchmark(spec: str) -> bool:
    """Does `spec` name a benchmark (`hitom`, `hitom:200`) rather than a file or hub dataset?"""
    return spec.split(":", 1)[0] in ADAPTERS


def load(spec: str, sources: Sources) -> Benchmark:
    """`name` or `name:N` (a subset of N items drawn with `sources.seed`, the same on every call)."""
    name, _, count = spec.partition(":")
    if name not in ADAPTERS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(ADAPTERS)}")
    bench = ADAPTERS[name].load(sources)
    if count:
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"{spec}: the part after ':' must be a positive item count")
        rows = sorted(random.Random(sources.seed).sample(range(len(bench.items)), min(int(count), len(bench.items))))
        if len(rows) < len(bench.items):
            bench.subset = f"seeded {len(rows)} of {len(bench.items)}"
        bench.items = [bench.items[r] for r in rows]
    return bench


def eval_items(spec: str, fields: FieldMap = FieldMap()) -> list[MCQItem]:
    """train.py's eval items: a benchmark (`tombench`, `hitom:200`) unless a file or folder of that
    name exists, else whatever load_items reads."""
    if is_benchmark(spec) and not Path(spec).expanduser().exists():
        return load(spec, Sources(fields=fields)).items
    return load_items(spec, fields)


from socialr1.evalsets.overlap import benchmark_overlap  # noqa: E402 (it reads ADAPTERS above)

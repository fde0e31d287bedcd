"""Evaluate a model on social-reasoning benchmarks in their native formats and their authors'
protocols, and write Social-R1's results table.

    python eval.py --model ./Qwen3-4B --suite social-r1 --compare      # the paper's eight benchmarks
    python eval.py --model runs/demo/final --benchmarks hitom tombench --mode cot --thinking off
    python eval.py --model ./Qwen3-4B --data my_items.jsonl --fields.answer answer
    python eval.py --suite social-r1 --inspect --output counts.json    # load and count, no model
    torchrun --nproc_per_node 8 eval.py --model ./SocialR1-4B --suite social-r1   # items split over GPUs

Writes results.json, results.md and predictions.jsonl to --output (a folder, or a results .json
file with the other two beside it) and prints the table.
"""

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro
from huggingface_hub.utils import HFValidationError, validate_repo_id

from socialr1 import distributed as D
from socialr1 import evalsets
from socialr1.config import ModelConfig
from socialr1.data import DataError, table_items
from socialr1.evalsets import report
from socialr1.evalsets.common import tables
from socialr1.evalsets.protocol import Aggregate, expand, score
from socialr1.evaluate import complete
from socialr1.models import ModelLoadError, load_pretrained, stop_token_ids
from socialr1.prompts import PromptMode, encode_prompts
from socialr1.sip import SIPFormat


@dataclass
class EvalConfig(evalsets.Sources):
    model: str | None = None
    """Checkpoint directory (e.g. runs/demo/final), local model folder, or hub name (not needed
    with --inspect)."""
    suite: Literal["social-r1"] | None = None
    """Every benchmark of Social-R1's results table found (missing ones are listed as missing)."""
    benchmarks: tuple[str, ...] = ()
    """Benchmarks by name (tombench, tombench-hard, socialiqa, simpletom, emobench, motivebench, hitom,
    tactfultom, bigtom, opentom); `name:N` asks a fixed seeded subset of N items."""
    data: str | None = None
    """Any other MCQ items: a JSONL/JSON/CSV/Parquet file, a folder of them, or a hub dataset name,
    read with --fields.*. With no --suite, --benchmarks or --data: tombench."""
    split: str = "test"
    """Split to load when `data` is a hub dataset."""
    mode: PromptMode = "sip"
    """Prompt: sip (our training prompt), card (the SocialR1 model card's instruction), cot (reason,
    then a final 'Answer: X' line), direct (the letter only). All through the chat template."""
    thinking: Literal["on", "off"] = "on"
    """Qwen3's enable_thinking switch of the chat template."""
    shuffles: int | None = None
    """Ask every item under K option orders (seeded); default: each benchmark's official protocol
    (tombench 5 + majority, motivebench its 6 fixed orders + mean, others 1)."""
    aggregate: Aggregate | None = None
    """Combine an item's answers over its orders: mean accuracy, or a majority vote; default: the
    benchmark's official choice."""
    limit: int | None = None
    """Ask only the first N items of each benchmark."""
    batch_size: int = 16
    """Prompts decoded together on each rank."""
    max_new_tokens: int = 1024
    """Completion length limit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    output: str = "runs/eval"
    """A folder for results.json, results.md and predictions.jsonl, or a .json path for the results
    (the other two beside it); with --inspect, the JSON file of counts."""
    inspect: bool = False
    """Load every benchmark, print and write item and option counts, and stop (no model)."""
    compare: bool = False
    """Add the paper's reported Overall rows to the table."""
    sip: SIPFormat = field(default_factory=SIPFormat)
    """Markers of the SIP format (must match what the model was trained with)."""


def load_benchmarks(cfg: EvalConfig) -> tuple[list[evalsets.Benchmark], dict[str, str]]:
    """The benchmarks asked for, and {name: why} for those of the suite that are not here."""
    if cfg.shuffles is not None and cfg.shuffles < 1:
        raise DataError(f"--shuffles must be at least 1, got {cfg.shuffles}")
    if cfg.limit is not None and cfg.limit < 1:
        raise DataError(f"--limit must be at least 1, got {cfg.limit}")
    names = list(evalsets.SUITES[cfg.suite]) if cfg.suite else []
    names += [b for b in cfg.benchmarks if b not in names]
    if not names and not cfg.data:
        names = ["tombench"]
    benches, missing = [], {}
    for name in names:
        try:
            benches.append(evalsets.load(name, cfg))
        except evalsets.Missing as e:
            if name not in cfg.benchmarks:
                missing[name] = str(e)
                continue
            raise
    if cfg.data:
        found = tables(cfg.data, cfg.split, "data")
        items = [it for label, table in found for it in table_items(table, cfg.fields, label)]
        benches.append(evalsets.Benchmark(Path(cfg.data).stem or cfg.data, items))
    for b in benches:
        if not b.items:
            raise DataError(f"{b.name}: no items")
        if cfg.limit and cfg.limit < len(b.items):
            b.subset = f"first {cfg.limit} of {len(b.items)}" + (f", {b.subset}" if b.subset else "")
            b.items = b.items[: cfg.limit]
    return benches, missing


def check_model(name: str) -> None:
    """A --model that is neither a folder here nor a hub name (./SocialR1-4B, runs/x/final) is a
    folder that is missing: say so, rather than ask the hub for it."""
    if Path(name).expanduser().exists():
        return
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise DataError(f"--model {name}: no such folder (a checkpoint such as runs/demo/final, or a model "
                        "folder; a hub name has the form org/name)") from None


def inspect(cfg: EvalConfig, benches: list[evalsets.Benchmark], missing: dict[str, str]) -> dict:
    out = {"benchmarks": {b.name: {"items": len(b.items), "options": dict(sorted(Counter(len(i.options) for i in b.items).items()))}
                          for b in benches}, "missing": missing}
    for b in benches:
        print(f"{b.name}: {len(b.items)} items, options {out['benchmarks'][b.name]['options']}  ({b.note})")
        for cat, n in sorted(Counter(i.ability for i in b.items).items()):
            if cat:
                print(f"    {cat}: {n}")
    for name, why in missing.items():
        print(f"{name}: missing ({why[:120]})")
    if cfg.output != EvalConfig.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    return out


def main(cfg: EvalConfig) -> dict:
    benches, missing = load_benchmarks(cfg)  # bad input stops here, before a model is loaded
    if cfg.inspect:
        return inspect(cfg, benches, missing)
    if not benches:
        raise DataError(
            f"nothing to evaluate: none of the benchmarks asked for is here ({', '.join(missing)}); "
            f"each needs its folder in --data-root {cfg.data_root} (tombench-hard and simpletom: the hub, or "
            "--tombench-hard / --simpletom PATH); --inspect says why each is missing"
        )
    if cfg.model is None:
        raise DataError("--model is required (except with --inspect)")
    check_model(cfg.model)
    world = D.init_world(cfg.device)
    try:
        # Eval only decodes (the rollout engine picks its own attention); ranks load one at a time (host memory).
        model = ModelConfig(name_or_path=cfg.model, attn_implementation="sdpa")
        lm, tokenizer = D.in_turn(lambda: load_pretrained(model, world.device, flag="--model"))
        lm.to(world.device, torch.bfloat16 if world.device.type == "cuda" else torch.float32).eval()
        results: dict = {"model": cfg.model, "mode": cfg.mode, "thinking": cfg.thinking, "benchmarks": {}}
        predictions = []
        for bench in benches:
            count = cfg.shuffles or bench.protocol.orders
            asks = expand(bench, count, cfg.seed)
            prompts = encode_prompts(tokenizer, [a.shown for a in asks], cfg.sip, cfg.mode, cfg.thinking == "on")
            start = time.perf_counter()
            texts, lengths, cut = complete(lm, tokenizer, prompts, cfg.batch_size, cfg.max_new_tokens,
                                           stop_token_ids(tokenizer), show_progress=world.is_main)
            seconds = time.perf_counter() - start
            aggregate = cfg.aggregate or (bench.protocol.aggregate if count == bench.protocol.orders else "mean")
            summary, records = score(bench, asks, texts, lengths, aggregate, cfg.mode, cfg.sip, cut)
            summary["items_per_s"] = len(bench.items) / max(seconds, 1e-9)
            results["benchmarks"][bench.name] = summary
            prompt_texts = tokenizer.batch_decode(prompts)
            predictions += [{**r, "prompt": p} for r, p in zip(records, prompt_texts)]
        results["overall"] = report.overall(results["benchmarks"])
        results["missing"] = missing
        if cfg.compare:
            results["compare"] = {"source": report.PAPER_SOURCE, "overall": report.PAPER_OVERALL}
        results["settings"] = {k: v for k, v in asdict(cfg).items() if k != "sip"}
        if world.is_main:
            print(report.table(results))
            write(cfg.output, results, predictions)
        return results
    finally:
        D.close_world(world)


def write(output: str, results: dict, predictions: list[dict]) -> None:
    path = Path(output)
    folder, name = (path.parent, path.name) if path.suffix == ".json" else (path, "results.json")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (folder / "results.md").write_text(report.markdown(results))
    with open(folder / "predictions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)


if __name__ == "__main__":
    cfg = tyro.cli(EvalConfig, description=__doc__)
    try:
        main(cfg)
    except (DataError, ModelLoadError) as e:
        sys.exit(f"error: {e}")

"""Evaluate a model on social-reasoning multiple-choice items: accuracy and format rate, overall
and per ability, one greedy SIP completion per item.

    python eval.py --model runs/demo/final                     # ToMBench beside the checkout
    python eval.py --model ./Qwen3-4B --data my_items.jsonl --fields.answer answer
    torchrun --nproc_per_node 8 eval.py --model runs/socialr1-4b/final   # items split over GPUs
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from socialr1 import distributed as D
from socialr1.config import ModelConfig
from socialr1.data import DataError, FieldMap, load_items
from socialr1.evaluate import evaluate
from socialr1.models import ModelLoadError, load_pretrained, stop_token_ids
from socialr1.prompts import encode_prompts, prefilled
from socialr1.rewards import RewardConfig, SIPReward
from socialr1.sip import SIPFormat

TOMBENCH = Path(__file__).resolve().parent.parent / "shared" / "data" / "tombench"


@dataclass
class EvalConfig:
    model: str
    """Checkpoint directory (e.g. runs/demo/final), local model folder, or hub name."""
    data: str = str(TOMBENCH)
    """MCQ items: a JSONL/JSON/CSV/Parquet file, a folder of them, or a hub dataset name."""
    split: str = "test"
    """Split to load when `data` is a hub dataset."""
    fields: FieldMap = field(default_factory=FieldMap)
    """Which fields hold story, question, options, answer and ability (defaults: ToMBench)."""
    limit: int | None = None
    """Evaluate only the first N items."""
    batch_size: int = 16
    """Items decoded together on each rank."""
    max_new_tokens: int = 1024
    """Completion length limit."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    output: str | None = None
    """Also write the results as JSON to this path."""
    sip: SIPFormat = field(default_factory=SIPFormat)
    """Markers of the SIP format (must match what the model was trained with)."""


def main(cfg: EvalConfig) -> dict[str, float]:
    world = D.init_world(cfg.device)
    try:
        lm, tokenizer = load_pretrained(ModelConfig(name_or_path=cfg.model), world.device)
        lm.to(world.device, torch.bfloat16 if world.device.type == "cuda" else torch.float32).eval()
        items = load_items(cfg.data, cfg.fields, cfg.split, cfg.limit)
        reward = SIPReward(tokenizer, RewardConfig(), total_steps=1, fmt=cfg.sip, prefix=prefilled(tokenizer, cfg.sip))
        result = evaluate(
            lm, world.device, items, encode_prompts(tokenizer, items, cfg.sip), reward,
            reward.encode_items(items), cfg.batch_size, cfg.max_new_tokens, tokenizer.pad_token_id,
            stop_token_ids(tokenizer), show_progress=world.is_main,
        )
        if world.is_main:
            print(table(result))
            if cfg.output:
                Path(cfg.output).write_text(json.dumps(result, indent=2, ensure_ascii=False))
        return result
    finally:
        D.close_world(world)


def table(result: dict[str, float]) -> str:
    rows = [(k.removeprefix("accuracy/"), v) for k, v in result.items() if k.startswith("accuracy/")]
    width = max([len(name) for name, _ in rows] + [len("overall")])
    lines = [f"{'ability':<{width}}  accuracy"] + [f"{name:<{width}}  {v:8.3f}" for name, v in rows]
    lines.append(f"{'overall':<{width}}  {result['accuracy']:8.3f}   (format {result['format']:.3f}, n={int(result['n'])})")
    return "\n".join(lines)


if __name__ == "__main__":
    cfg = tyro.cli(EvalConfig, description=__doc__)
    try:
        main(cfg)
    except (DataError, ModelLoadError) as e:
        sys.exit(f"error: {e}")

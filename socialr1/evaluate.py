"""MCQ evaluation: one greedy completion per item, scored by the same reward code as training
(accuracy and format), overall and per ability. Items are split over ranks; counts are summed."""

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from socialr1.items import MCQItem
from socialr1.rewards import SIPReward
from socialr1.rollout import greedy


@torch.no_grad()
def evaluate(
    model: nn.Module,
    device: torch.device,
    items: Sequence[MCQItem],
    prompts: Sequence[list[int]],
    reward: SIPReward,
    features: object,
    batch_size: int,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int],
    show_progress: bool = False,
) -> dict[str, float]:
    """model: a Hugging Face causal LM (on `device`, weights gathered under FSDP); features: reward.encode_items(items). Returns accuracy, format, and per-ability
    accuracy as {"accuracy": .., "format": .., "n": .., "accuracy/<ability>": ..}."""
    rank, world = dist.get_rank(), dist.get_world_size()
    abilities = sorted({it.ability for it in items})
    counts = torch.zeros(len(abilities), 3, dtype=torch.float64)  # n, correct, well-formed
    mine = list(range(rank, len(items), world))
    starts = range(0, len(mine), batch_size)
    for start in tqdm(starts, desc="eval", disable=not show_progress, dynamic_ncols=True):
        rows = mine[start : start + batch_size]
        rollout = greedy(model, [prompts[r] for r in rows], rows, max_new_tokens, pad_id, stop_ids)
        scores = reward.score(
            rollout.completion_ids, rollout.completion_mask, features, rollout.item_index, step=0
        )
        for r, acc, fmt in zip(rows, scores["accuracy"].tolist(), scores["format"].tolist()):
            counts[abilities.index(items[r].ability)] += torch.tensor([1.0, acc, fmt], dtype=torch.float64)
    dist.all_reduce(counts)
    total = counts.sum(0)
    n = max(total[0].item(), 1.0)
    result = {"n": total[0].item(), "accuracy": total[1].item() / n, "format": total[2].item() / n}
    for name, (k, correct, _) in zip(abilities, counts.tolist()):
        result[f"accuracy/{name or 'all'}"] = correct / max(k, 1.0)
    return result

"""Greedy decoding of evaluation prompts on every rank, through the same rollout path as training:
prompts sorted by length (similar lengths share a batch, the longest run first), split across ranks.
`evaluate` scores items with the training reward (periodic eval in the trainer); `complete` returns
the texts for benchmark scoring (eval.py)."""

from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from socialr1.items import MCQItem
from socialr1.rewards import SIPReward
from socialr1.rollout import Rollout, greedy


def generate(
    model: nn.Module,
    prompts: Sequence[list[int]],
    batch_size: int,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int],
    show_progress: bool = False,
) -> Iterator[tuple[list[int], Rollout]]:
    """This rank's share of the prompts, in batches: (prompt indices, their greedy completions)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    by_length = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    mine = by_length[rank::world]
    starts = range(0, len(mine), batch_size)
    for start in tqdm(starts, desc="eval", disable=not show_progress, dynamic_ncols=True):
        rows = mine[start : start + batch_size]
        yield rows, greedy(model, [prompts[r] for r in rows], rows, max_new_tokens, pad_id, stop_ids)


@torch.no_grad()
def complete(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    batch_size: int,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    show_progress: bool = False,
) -> tuple[list[str], list[int], list[bool]]:
    """Greedy completion text (special tokens dropped), token count, and whether it was cut at
    `max_new_tokens` (no stop token), of every prompt, in prompt order, on every rank."""
    mine: dict[int, tuple[str, int, bool]] = {}
    for rows, rollout in generate(model, prompts, batch_size, max_new_tokens,
                                  tokenizer.pad_token_id, stop_ids, show_progress):
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        mask = rollout.completion_mask.bool()  # [B, C] up to and including the first stop token
        stopped = (torch.isin(rollout.completion_ids, torch.tensor(list(stop_ids), device=mask.device)) & mask).any(1)
        mine.update(zip(rows, zip(texts, mask.sum(1).tolist(), (~stopped).tolist())))
    parts: list[dict[int, tuple[str, int, bool]]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, mine)
    done = {k: v for part in parts for k, v in part.items()}
    ordered = [done[i] for i in range(len(prompts))]
    return [o[0] for o in ordered], [o[1] for o in ordered], [o[2] for o in ordered]


@torch.no_grad()
def evaluate(
    model: nn.Module,
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
    """model: a Hugging Face causal LM (weights gathered under FSDP); features: reward.encode_items(items). Returns accuracy, format, and per-ability
    accuracy as {"accuracy": .., "format": .., "n": .., "accuracy/<ability>": ..}."""
    abilities = sorted({it.ability for it in items})
    counts = torch.zeros(len(abilities), 3, dtype=torch.float64)  # n, correct, well-formed
    for rows, rollout in generate(model, prompts, batch_size, max_new_tokens, pad_id, stop_ids, show_progress):
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

"""Rollout: G sampled completions per prompt from the current policy, with HF `generate` and a
static KV cache, in-process on every rank."""

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on prompt tokens
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the stop token
    item_index: torch.Tensor  # [N] which item each row answers; a prompt's G rows are adjacent

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def rows(self, start: int, stop: int) -> "Rollout":
        """Rows [start, stop), with columns that are padding in every kept row trimmed away."""
        part = {f.name: getattr(self, f.name)[start:stop] for f in fields(self)}
        keep_p = int(part["prompt_mask"].sum(1).max())
        keep_c = max(int(part["completion_mask"].sum(1).max()), 1)
        part["prompt_ids"], part["prompt_mask"] = (
            part["prompt_ids"][:, -keep_p:],
            part["prompt_mask"][:, -keep_p:],
        )
        part["completion_ids"], part["completion_mask"] = (
            part["completion_ids"][:, :keep_c],
            part["completion_mask"][:, :keep_c],
        )
        return Rollout(**part)

    @property
    def input_ids(self) -> torch.Tensor:  # [N, P + C]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # [N, P + C]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged token lists -> ids [N, P], mask [N, P], padded on the left as decoding needs."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s) :] = 1
    return ids, mask


def stop_mask(completion_ids: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """[N, C] -> mask [N, C]: 1 up to and including the first stop token (all 1 if none)."""
    is_stop = torch.isin(completion_ids, torch.tensor(list(stop_ids), device=completion_ids.device))
    stops_before = is_stop.long().cumsum(dim=1) - is_stop.long()  # stops strictly before t
    return (stops_before == 0).long()


@torch.no_grad()
def sample(
    model: nn.Module,
    device: torch.device,
    prompts: Sequence[Sequence[int]],
    item_index: Sequence[int],
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    pad_id: int,
    stop_ids: Sequence[int],
    compile: bool = False,
) -> Rollout:
    """num_samples completions per prompt from `model.generate`; greedy when temperature == 0.
    compile: let HF compile the decoding step. Off by default: HF would compile on its own on CUDA
    with a static cache, and under FSDP2 every decoder layer's hooks break the graph, the weights
    gathered anew each rollout re-record the CUDA graphs, and flash-attn's growing 2D mask makes a
    new graph per token."""
    prompt_ids, prompt_mask = pad_left(prompts, pad_id)
    prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0).to(device)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0).to(device)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
        if temperature > 0
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    out = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        cache_implementation="static",
        pad_token_id=pad_id,
        eos_token_id=list(stop_ids),
        # Weights are all-gathered for the whole rollout (distributed.gathered), so ranks decode
        # independently; HF would otherwise keep every rank stepping until the slowest finishes.
        synced_gpus=False,
        disable_compile=not compile,
        **sampling,
    )
    completion_ids = out[:, prompt_ids.shape[1] :]
    mask = stop_mask(completion_ids, stop_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
    index = torch.tensor(item_index, device=device).repeat_interleave(num_samples)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, index)

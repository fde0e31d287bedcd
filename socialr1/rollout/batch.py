"""The rollout batch as every later stage sees it, and its padding helpers."""

from dataclasses import dataclass, fields
from typing import Sequence

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on prompt tokens
    completion_ids: torch.Tensor  # [N, C] right-padded
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the stop token
    item_index: torch.Tensor  # [N] which item each row answers; a prompt's G rows are adjacent
    logprobs: torch.Tensor | None = None  # [N, C] the sampler's log-prob of each token, when asked for

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def rows(self, start: int, stop: int) -> "Rollout":
        """Rows [start, stop), with columns that are padding in every kept row trimmed away."""
        return self.split(stop - start, start, stop)[0]

    def split(self, size: int, start: int = 0, stop: int | None = None) -> list["Rollout"]:
        """Rows [start, stop) in micro-batches of `size` rows, each trimmed of the columns that are
        padding in all its rows. The widths are read from the device once for all micro-batches."""
        stop = len(self) if stop is None else stop
        spans = [(s, min(s + size, stop)) for s in range(start, stop, size)]
        widths = torch.stack([
            torch.stack([self.prompt_mask[a:b].sum(1).max(), self.completion_mask[a:b].sum(1).max()]) for a, b in spans
        ]).tolist()
        return [self._trim(a, b, keep_p, max(keep_c, 1)) for (a, b), (keep_p, keep_c) in zip(spans, widths)]

    def _trim(self, start: int, stop: int, keep_p: int, keep_c: int) -> "Rollout":
        part = {f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop] for f in fields(self)}
        if part["logprobs"] is not None:
            part["logprobs"] = part["logprobs"][:, :keep_c]
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

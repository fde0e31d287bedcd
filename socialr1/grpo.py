"""GRPO's arithmetic outside the model: group-relative advantages, and how much each micro-batch's
loss counts so that a step over many micro-batches and ranks equals one step over the whole batch."""

from typing import Literal

import torch

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]
STD_EPS = 1e-4  # TRL's epsilon: keeps groups whose rewards are all equal at advantage 0


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: ScaleRewards, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """rewards: [N] with the G samples of a prompt adjacent -> advantages [N].

    (r - group mean), divided by the group's std ("group"), the whole batch's std ("batch", as in
    TRL's scale_rewards="batch"), or by nothing ("none", Dr. GRPO). valid: [N] bool, False for a
    sample whose reward could not be computed (a reward service failed): it is left out of every
    mean and std and gets advantage 0, so that its group trains as if it were not there."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    grouped, ok = rewards.view(-1, group_size), valid.view(-1, group_size)  # [P, G]
    n = ok.sum(dim=1, keepdim=True)
    mean = torch.where(ok, grouped, 0).sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(ok, grouped - mean, 0)
    if scale == "group":  # unbiased std over the valid samples, as torch.std; 0 for one sample
        std = (centred.square().sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
        centred = centred / (std + STD_EPS)
    elif scale == "batch":
        centred = centred / (rewards[valid].std() + STD_EPS)
    return centred.reshape(-1)


def zero_std_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose samples all got the same reward (they teach nothing)."""
    return (rewards.view(-1, group_size).std(dim=1) < STD_EPS).float().mean().item()


def microbatch_weight(
    loss_type: LossType,
    micro_seqs: int,
    micro_tokens: int | torch.Tensor,
    global_seqs: int,
    global_tokens: int | torch.Tensor,
    micro_batches_per_rank: int,
    world_size: int,
) -> float | torch.Tensor:
    """Factor that turns a micro-batch's normalised loss into its share of the whole step's loss.

    The loss of one micro-batch is normalised within it (kernels.grpo_loss). Summing the weighted
    micro-batch losses over a rank, then averaging gradients over ranks (FSDP's reduce-scatter), must
    give the loss of the whole batch with TRL's normalisation:
    grpo and dr_grpo average over all sequences, dapo over all active tokens; bnpo normalises by
    each micro-batch's own tokens and averages the micro-batches, as TRL does."""
    if loss_type in ("grpo", "dr_grpo"):
        return micro_seqs / global_seqs * world_size
    if loss_type == "dapo":  # token counts may be device tensors: no host read here
        return micro_tokens / torch.as_tensor(global_tokens).clamp(min=1) * world_size
    return 1.0 / micro_batches_per_rank

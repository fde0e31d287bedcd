"""GRPO loss (TRL GRPOTrainer semantics) on top of linear_logprobs: only O(tokens) tensors besides its workspace."""

from typing import Literal

import torch

from socialr1.kernels.linear_logprobs import Backend, linear_logprobs

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


def _token_weights(
    mask: torch.Tensor,  # [B, T] bool
    rows: torch.Tensor,  # [n] batch row of each active token
    loss_type: LossType,
    max_completion_length: int | None,
) -> torch.Tensor:
    """w: [n] such that loss = sum(w * per_token_loss) over active tokens reproduces TRL's normalisation."""
    batch, length = mask.shape
    ones = torch.ones(rows.shape, dtype=torch.float32, device=mask.device)
    if loss_type == "grpo":
        seq_len = mask.sum(-1).clamp(min=1).float()  # [B]
        return ones / (batch * seq_len[rows])
    if loss_type in ("bnpo", "dapo"):
        # TRL normalises dapo by the active-token count over all processes; within one call that is bnpo.
        return ones / mask.sum().clamp(min=1).float()
    if loss_type == "dr_grpo":
        return ones / (batch * (max_completion_length or length))
    raise ValueError(f"unknown loss_type {loss_type!r}")


def grpo_loss(
    hidden: torch.Tensor,  # [B, T, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [B, T] int64
    mask: torch.Tensor,  # [B, T] 0/1 or bool
    advantages: torch.Tensor,  # [B]
    old_logp: torch.Tensor | None = None,  # [B, T]
    ref_logp: torch.Tensor | None = None,  # [B, T]
    beta: float = 0.04,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    loss_type: LossType = "grpo",
    temperature: float = 1.0,
    *,
    max_completion_length: int | None = None,
    backend: Backend | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (loss: scalar, differentiable w.r.t. hidden and weight; stats: detached 0-d tensors)."""
    mask = mask.bool()
    length = mask.shape[1]
    # Only active tokens go through the LM head: padding costs no FLOPs and its gradient is exactly zero.
    active = mask.reshape(-1).nonzero().squeeze(-1)  # [n]
    rows = active // length  # [n]
    logp, entropy = linear_logprobs(
        hidden.reshape(-1, hidden.shape[-1])[active], weight, targets.reshape(-1)[active],
        temperature, with_entropy=True, backend=backend,
    )  # [n], [n]

    def constant(x: torch.Tensor) -> torch.Tensor:  # [B, T] -> [n]; only hidden and weight get gradients
        return x.detach().reshape(-1)[active].to(logp.dtype)

    adv = advantages.detach().to(logp.dtype)[rows]  # [n]
    old = logp.detach() if old_logp is None else constant(old_logp)

    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # [n]
    kl = torch.zeros_like(logp)
    if beta != 0.0 and ref_logp is not None:
        delta = constant(ref_logp) - logp
        kl = torch.exp(delta) - delta - 1  # k3 estimator
        per_token = per_token + beta * kl
    weights = _token_weights(mask, rows, loss_type, max_completion_length).to(logp.dtype)
    loss = (weights * per_token).sum()

    with torch.no_grad():
        count = max(active.numel(), 1)
        low = (ratio < 1 - eps_low) & (adv < 0)
        high = (ratio > 1 + eps_high) & (adv > 0)
        stats = {
            "kl": kl.sum() / count,
            "clip_ratio_low": low.sum() / count,
            "clip_ratio_high": high.sum() / count,
            "clip_ratio": (low | high).sum() / count,
            "entropy": entropy.sum() / count,
        }
    return loss, stats

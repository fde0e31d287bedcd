"""The optimizer step both trainers take: AdamW with warmup and decay, the global gradient norm
clipped, and a step skipped on every rank when any loss or the norm is not finite."""

import math
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from socialr1.config import OptimConfig
from socialr1.distributed import full_tensor


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step s: linear warmup, then the chosen decay."""

    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        progress = (s - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
        if cfg.schedule == "linear":
            return 1.0 - progress
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (a 0-d tensor, not read to the host), clipped to max_norm (0: off)."""
    params = [p for p in model.parameters() if p.grad is not None]
    return full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))


def guarded_step(optimizer: torch.optim.Optimizer, local_loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Collective: the optimizer steps unless some rank's loss or the global grad norm is not
    finite; then every rank skips it (weights and optimizer state unchanged). True if skipped.
    Its decision is one host read per optimizer step."""
    finite = (torch.isfinite(local_loss) & torch.isfinite(grad_norm)).float().cpu()
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item():
        optimizer.step()
        return False
    optimizer.zero_grad(set_to_none=True)
    return True

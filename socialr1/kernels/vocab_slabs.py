"""Backward of linear_logprobs for the `torch` and `triton` backends: vocab slabs, no atomics, no [V, H] float32.

For each slab of LM-head rows [v, v + cols), a backend's `grad_logits` recomputes the logits of all N tokens against
the slab and returns dz = d loss / d logits: [N, cols] in the input dtype. Then two GEMMs:
  grad_weight[v : v + cols] = dz.T @ hidden      one GEMM over every token: float32 accumulation inside the GEMM,
                                                 written once in the weight dtype, so no float32 [V, H] buffer
  grad_hidden += dz @ weight[v : v + cols]       into a float32 [N, H] accumulator (none with a single slab)
Every output element is written by one GEMM (or one ordered sum over slabs), so the result is deterministic.
Workspace: one [N, cols] block of at most SLAB_BYTES (float32 logits for `torch`, dz in the input dtype for `triton`)
plus the [N, H] float32 accumulator; it does not grow with V. Fewer, wider slabs mean fewer passes over that
accumulator.
"""

from typing import Callable

import torch

# Bytes of the [N, cols] block a backend's grad_logits materialises: vocab columns per slab shrink as N grows.
SLAB_BYTES = 128 * 2**20
_COL_ALIGN = 64  # slab widths stay multiples of the vocab tile so only the last slab is ragged

# grad_logits(hidden [N, H], weight_slab [cols, H], targets [N] relative to the slab, lse [N], scale [N], temperature)
#   -> dz [N, cols] = scale * (onehot(targets) - softmax), in hidden.dtype
GradLogits = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def slab_columns(tokens: int, vocab: int, item_bytes: int) -> int:
    cols = SLAB_BYTES // (item_bytes * max(tokens, 1)) // _COL_ALIGN * _COL_ALIGN
    return min(vocab, max(_COL_ALIGN, cols))


def backward(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N]
    lse: torch.Tensor,  # [N] log-sum-exp of the temperature-scaled logits, from the forward
    grad_logp: torch.Tensor,  # [N]
    temperature: float,
    grad_logits: GradLogits,
    item_bytes: int,  # bytes per element of the block grad_logits materialises
    need_hidden: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """d logp_n / d z_nv = onehot - softmax, with z = hidden @ weight.T / temperature."""
    (n, h), vocab = hidden.shape, weight.shape[0]
    cols = slab_columns(n, vocab, item_bytes)
    scale = grad_logp.to(lse.dtype) / temperature  # [N]: d loss / d (raw logit) carries 1 / T
    grad_weight = torch.empty_like(weight) if need_weight else None
    grad_hidden = None
    if need_hidden and cols < vocab:  # several slabs: sum their grad_hidden terms in float32
        grad_hidden = hidden.new_zeros(n, h, dtype=torch.promote_types(hidden.dtype, torch.float32))  # [N, H]
    with torch.no_grad():
        for v in range(0, vocab, cols):
            w = weight[v : v + cols]  # [cols, H]
            dz = grad_logits(hidden, w, targets - v, lse, scale, temperature)  # [N, cols]
            if need_weight:
                torch.mm(dz.T, hidden, out=grad_weight[v : v + cols])
            if need_hidden:
                grad_hidden = dz @ w if grad_hidden is None else grad_hidden.add_(dz @ w)
    if grad_hidden is not None:
        grad_hidden = grad_hidden.to(hidden.dtype)
    return grad_hidden, grad_weight

"""Per-token log-probs (and entropy) of `targets` under softmax(hidden @ weight.T / temperature)."""

import os
from types import ModuleType
from typing import Literal

import torch

from socialr1.kernels import chunked, vocab_slabs
from socialr1.kernels.reference import naive_linear_logprobs

Backend = Literal["triton", "torch", "naive"]


def default_backend(device: torch.device) -> Backend:
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return "triton"
    return "torch"


def _impl(backend: Backend) -> ModuleType:
    if backend == "torch":
        return chunked
    if backend == "triton":
        # Imported lazily so CPU-only users never need a working Triton install.
        from socialr1.kernels import triton_logprobs

        return triton_logprobs
    raise ValueError(f"unknown backend {backend!r}")


class _LinearLogprobs(torch.autograd.Function):
    """Shared autograd shell: `impl` provides forward (logp, lse, entropy), and grad_logits and block_item_bytes
    for the vocab-slab backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, impl):
        logp, lse, entropy = impl.forward(hidden, weight, targets, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.impl = temperature, impl
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden, grad_weight = vocab_slabs.backward(
            hidden, weight, targets, lse, grad_logp.float(), ctx.temperature,
            ctx.impl.grad_logits, ctx.impl.block_item_bytes(hidden.dtype),
            need_hidden=ctx.needs_input_grad[0], need_weight=ctx.needs_input_grad[1],
        )
        return grad_hidden, grad_weight, None, None, None, None


def linear_logprobs(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N] int64
    temperature: float = 1.0,
    with_entropy: bool = False,
    backend: Backend | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """logp: [N] float32 (float64 for float64 inputs), differentiable w.r.t. hidden and weight.

    With `with_entropy=True` also returns entropy: [N] of softmax(logits / temperature), without gradient.
    """
    backend = backend or default_backend(hidden.device)
    if backend == "naive":
        logp, entropy = naive_linear_logprobs(hidden, weight, targets, temperature, with_entropy)
    else:
        logp, entropy = _LinearLogprobs.apply(hidden, weight, targets, temperature, with_entropy, _impl(backend))
    return (logp, entropy) if with_entropy else logp

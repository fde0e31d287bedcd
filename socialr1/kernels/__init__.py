"""Fused LM-head log-prob / GRPO-loss ops that never materialise [tokens, vocab] logits.

backend: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (chunked PyTorch), "naive" (full logits).
"""

from socialr1.kernels.grpo_loss import grpo_loss
from socialr1.kernels.linear_logprobs import linear_logprobs

__all__ = ["grpo_loss", "linear_logprobs"]

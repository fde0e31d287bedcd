"""The model as GRPO sees it: per-token log-probs and the GRPO loss of completions, computed from
the final hidden states and the LM head by our kernels, so [tokens, vocab] logits never exist.

Under FSDP2 this wrapper is the root shard group: it owns the embeddings, final norm and LM head,
and `logprobs` / `loss` are registered as forward methods, so the head weight the kernels see is
the all-gathered one and its gradient flows back into the sharded parameter."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from kernels import grpo_loss, linear_logprobs
from socialr1.grpo import LossType
from socialr1.rollout import Rollout


@dataclass(frozen=True)
class LossSettings:
    beta: float
    eps_low: float
    eps_high: float
    loss_type: LossType
    temperature: float
    max_completion_length: int


class Policy(nn.Module):
    FORWARD_METHODS = ("logprobs", "loss", "generate")  # registered with FSDP as entry points

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm

    def _completion_hidden(self, batch: Rollout) -> torch.Tensor:
        """Hidden states that predict each completion token: [N, C, H]."""
        mask = batch.attention_mask
        # Left padding: positions must count real tokens only, exactly as during generation.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.lm.model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions)
        width = batch.completion_ids.shape[1]
        return out.last_hidden_state[:, -width - 1 : -1]

    def logprobs(self, batch: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """logp, entropy: [N, C] (zero where completion_mask is 0)."""
        hidden = self._completion_hidden(batch)
        mask = batch.completion_mask.bool()
        logp, entropy = linear_logprobs(
            hidden[mask], self.lm.lm_head.weight, batch.completion_ids[mask], temperature,
            with_entropy=True,
        )
        full = torch.zeros(mask.shape, dtype=logp.dtype, device=logp.device)
        return full.masked_scatter(mask, logp), full.masked_scatter(mask, entropy)

    def loss(
        self,
        batch: Rollout,
        advantages: torch.Tensor,  # [N]
        old_logp: torch.Tensor | None,  # [N, C]
        ref_logp: torch.Tensor | None,  # [N, C]
        s: LossSettings,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_loss(
            self._completion_hidden(batch), self.lm.lm_head.weight, batch.completion_ids,
            batch.completion_mask, advantages, old_logp=old_logp, ref_logp=ref_logp, beta=s.beta,
            eps_low=s.eps_low, eps_high=s.eps_high, loss_type=s.loss_type,
            temperature=s.temperature, max_completion_length=s.max_completion_length,
        )

    def generate(self, **kwargs) -> torch.Tensor:
        return self.lm.generate(**kwargs)

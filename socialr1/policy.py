"""The model as GRPO sees it: per-token log-probs and the GRPO loss of completions, computed from
the final hidden states and the LM head by our kernels, so [tokens, vocab] logits never exist.

Under FSDP2 this wrapper is the root shard group: it owns the embeddings, final norm and LM head,
and `logprobs` / `loss` are registered as forward methods, so the head weight the kernels see is
the all-gathered one and its gradient flows back into the sharded parameter."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from socialr1.kernels import grpo_loss, linear_logprobs
from socialr1 import decoder
from socialr1.grpo import LossType
from socialr1.models import attention
from socialr1.rollout import Rollout


@dataclass(frozen=True)
class LossSettings:
    beta: float
    eps_low: float
    eps_high: float
    loss_type: LossType
    temperature: float
    max_completion_length: int


class PrefixKV:
    """KV-cache object (HF's `Cache.update` interface) for the prompt-shared forward. Recording, it
    keeps each layer's prompt keys/values [P, kv_heads, W, D]; extending, it hands attention the
    prompt's states repeated for the G completions of each prompt, followed by the completions' own.
    Replay-safe under activation checkpointing: a replayed prompt layer does not overwrite what was
    recorded, and extending stores nothing."""

    def __init__(self, group: int = 0, keys: dict | None = None, values: dict | None = None) -> None:
        self.group = group  # 0: record; G: extend
        self.keys: dict[int, torch.Tensor] = {} if keys is None else keys
        self.values: dict[int, torch.Tensor] = {} if values is None else values

    def extended(self, group: int) -> "PrefixKV":
        """The extending view of what this one recorded (a separate object: a replayed layer must
        see the mode it first ran in)."""
        return PrefixKV(group, self.keys, self.values)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.group:
            self.keys.setdefault(layer_idx, key)
            self.values.setdefault(layer_idx, value)
            return key, value
        prefix_k = self.keys[layer_idx].repeat_interleave(self.group, dim=0)
        prefix_v = self.values[layer_idx].repeat_interleave(self.group, dim=0)
        return torch.cat([prefix_k, key], dim=2), torch.cat([prefix_v, value], dim=2)


class Policy(nn.Module):
    FORWARD_METHODS = ("logprobs", "loss")  # registered with FSDP as entry points

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm

    def _completion_hidden(self, batch: Rollout, group: int = 1) -> torch.Tensor:
        """Hidden states that predict each completion token: [N, C, H]. group > 1: rows come in
        groups of `group` completions of one prompt, whose prompt is computed once."""
        if group > 1:
            return self._shared_prompt_hidden(batch, group)
        mask = batch.attention_mask
        # Left padding: positions must count real tokens only, exactly as during generation.
        out = self.lm.model(
            input_ids=batch.input_ids, attention_mask=mask, position_ids=decoder.positions_of(mask), use_cache=False
        )
        width = batch.completion_ids.shape[1]
        return out.last_hidden_state[:, -width - 1 : -1]

    def _shared_prompt_hidden(self, batch: Rollout, group: int) -> torch.Tensor:
        """The prompt pass runs once per prompt [P, W] and records its keys/values; the completion
        pass [N = P * G, C - 1] attends to them, repeated per row, so the gradients of all G
        completions flow back into the one prompt computation."""
        lm = self.lm
        prompt_ids, prompt_mask = batch.prompt_ids[::group], batch.prompt_mask[::group]  # [P, W]
        kv = PrefixKV()
        with attention(lm, decoder.MASKED_ATTENTION), decoder.cache_through_checkpoint(lm):
            h = decoder.forward(
                lm, prompt_ids, decoder.positions_of(prompt_mask), decoder.causal_padded(prompt_mask), kv, hooks=True
            )
            first = h[:, -1:].repeat_interleave(group, dim=0)  # [N, 1, H] predicts completion token 0
            steps = batch.completion_ids.shape[1] - 1
            if steps == 0:
                return first
            width = prompt_ids.shape[1]
            cols = torch.arange(steps, device=h.device)
            positions = prompt_mask.sum(1).repeat_interleave(group)[:, None] + cols  # [N, C - 1]
            sees_prompt = batch.prompt_mask.bool()[:, None, :].expand(-1, steps, width)  # [N, C - 1, W]
            causal = (cols[None, :] <= cols[:, None]).expand(len(batch), -1, -1)  # [N, C - 1, C - 1]
            mask = torch.cat([sees_prompt, causal], dim=2)[:, None]
            rest = decoder.forward(lm, batch.completion_ids[:, :-1], positions, mask, kv.extended(group), hooks=True)
        return torch.cat([first, rest], dim=1)

    def logprobs(self, batch: Rollout, temperature: float, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """logp, entropy: [N, C] (zero where completion_mask is 0)."""
        hidden = self._completion_hidden(batch, group)
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
        group: int = 1,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_loss(
            self._completion_hidden(batch, group), self.lm.lm_head.weight, batch.completion_ids,
            batch.completion_mask, advantages, old_logp=old_logp, ref_logp=ref_logp, beta=s.beta,
            eps_low=s.eps_low, eps_high=s.eps_high, loss_type=s.loss_type,
            temperature=s.temperature, max_completion_length=s.max_completion_length,
        )

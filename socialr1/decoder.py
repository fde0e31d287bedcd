"""A Hugging Face decoder-only LM (Qwen3 / Llama layout: embed_tokens, layers, norm, rotary_emb) run
layer by layer with our own boolean attention mask and KV-cache object. HF's decoder layers do the
math; we decide what attention sees. Used by the rollout engine (prefill and decode) and by the
prompt-shared training forward (policy.py)."""

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from transformers import PreTrainedModel

# Our boolean 4D masks go through SDPA whatever kernel the model was loaded with: flash-attn takes
# 2D padding masks only, eager wants additive ones (switch with models.attention).
MASKED_ATTENTION = "sdpa"


class KVCache(Protocol):
    """What HF's attention calls (the `Cache.update` interface): store or combine this layer's new
    key/value states [B, kv_heads, T, D] and return the states attention reads."""

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]: ...


def unsupported(lm: PreTrainedModel) -> str | None:
    """Why our layer-by-layer forward cannot run this model, or None when it can."""
    body = getattr(lm, "model", None)
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(body, a)]
    if missing or not hasattr(lm, "lm_head"):
        return f"{type(lm).__name__} lacks the Qwen3/Llama decoder layout ({', '.join(missing) or 'lm_head'})"
    if "sliding_attention" in (getattr(lm.config, "layer_types", None) or ()):
        return f"{type(lm).__name__} has sliding-window layers; only full attention is supported"
    return None


def check_supported(lm: PreTrainedModel) -> None:
    if reason := unsupported(lm):
        raise ValueError(f"the rollout engine cannot run this model: {reason}")


@contextmanager
def cache_through_checkpoint(lm: PreTrainedModel) -> Iterator[None]:
    """HF's activation checkpointing drops a KV cache handed to a layer, because a cache that appends
    would be appended to twice when the backward pass replays the layer. Ours (PrefixKV) are
    replay-safe, so let them through for the duration of the block."""
    layers = list(lm.model.layers)
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Left-padded mask [B, T] -> position ids [B, T] counting real tokens only (as HF generate)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def causal_padded(mask: torch.Tensor) -> torch.Tensor:
    """Prefill mask [B, 1, T, T] from a left-padded 0/1 mask [B, T]: causal over real tokens. Every
    query also sees itself, so padding rows stay finite (an all-False row makes SDPA return NaN)."""
    t = mask.shape[1]
    idx = torch.arange(t, device=mask.device)
    causal = idx[None, :] <= idx[:, None]  # [T(query), T(key)]
    allowed = causal[None] & mask.bool()[:, None, :]
    return (allowed | torch.eye(t, dtype=torch.bool, device=mask.device))[:, None]


def forward(
    lm: PreTrainedModel,
    ids: torch.Tensor,  # [B, T]
    positions: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, 1, T, K] bool, True where the query may attend the key
    cache: KVCache | None,
    hooks: bool,
    **attention_kwargs,
) -> torch.Tensor:
    """Final-norm hidden states [B, T, H]. hooks=False calls each layer's `forward` directly, skipping
    module hooks: FSDP's per-layer all-gather and reshard, when the caller holds the weights gathered.
    `attention_kwargs` reach the attention function."""
    body = lm.model
    h = body.embed_tokens(ids)
    rope = body.rotary_emb(h, positions)
    for layer in body.layers:
        call = layer if hooks else layer.forward
        h = call(h, attention_mask=mask, position_embeddings=rope, cache=cache, **attention_kwargs)
    return body.norm(h)

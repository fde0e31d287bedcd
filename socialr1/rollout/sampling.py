"""Decode settings as one typed object, and the token choice from next-token logits.

Only the settings written here shape the samples: nothing falls back to a library's or a model's
generation defaults (HF's top_k=50, Qwen3's shipped T 0.6 / top_p 0.95 / top_k 20), which would
make the samples off-policy for a loss computed at `temperature` over the full vocabulary."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0  # 1.0: off
    top_k: int = 0  # 0: off
    stop_ids: tuple[int, ...] = ()  # a row ends at (and keeps) its first stop token
    stop_strings: tuple[str, ...] = ()  # ... or at the token that completes one of these strings
    check_every: int = 8  # decode steps between host reads of which rows have finished

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def for_eval(cls, max_new_tokens: int, stop_ids: tuple[int, ...], stop_strings: tuple[str, ...] = ()) -> "SamplingParams":
        return cls(max_new_tokens, temperature=0.0, stop_ids=tuple(stop_ids), stop_strings=tuple(stop_strings))


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [B, V], tokens [B] -> [B]: log-prob of each token under softmax(logits / T) over the
    whole vocabulary (T = 1 for greedy), the distribution the GRPO loss scores; top-k / top-p only
    restrict which tokens may be drawn."""
    scaled = logits.float() / (params.temperature if not params.greedy else 1.0)
    return scaled.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> tokens [B], on the device and without a host sync."""
    if params.greedy:
        return logits.argmax(-1)
    scaled = logits.float() / params.temperature
    if params.top_k > 0:
        kth = scaled.topk(min(params.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = scaled.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p: a token goes when the mass before it does.
        drop = (probs.cumsum(-1) - probs) >= params.top_p
        drop[:, 0] = False
        scaled = scaled.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = scaled.softmax(-1)
    # argmax(p / E) with E ~ Exp(1) draws from p (the exponential race), without multinomial's sync;
    # -log(U) is Exp(1), and on CPU several times faster than Tensor.exponential_.
    race = torch.rand(probs.shape, generator=generator, device=probs.device).log_().neg_()
    return (probs / race).argmax(-1)

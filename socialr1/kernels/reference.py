"""Plain PyTorch reference: materialises the full [N, V] logits. Used as the `naive` backend and test oracle."""

import torch


def naive_linear_logprobs(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N] int64
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # float64 stays float64 so the tests can use this as an exact oracle; everything else accumulates in float32.
    acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = (hidden @ weight.T).to(acc_dtype) / temperature  # [N, V]
    logprobs = logits.log_softmax(-1)  # [N, V]
    logp = logprobs.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logprobs.exp() * logprobs).sum(-1)  # [N]
    return logp, entropy

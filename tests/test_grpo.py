"""GRPO arithmetic against an independent, loop-by-loop reference of TRL's definitions."""

import math
import statistics

import pytest
import torch

from socialr1.kernels import grpo_loss
from socialr1.grpo import group_advantages, microbatch_weight, zero_std_fraction

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]


def ref_advantages(rewards: list[float], g: int, scale: str) -> list[float]:
    out = []
    batch_std = statistics.stdev(rewards)
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        mean = sum(group) / g
        div = {"group": statistics.stdev(group) + 1e-4, "batch": batch_std + 1e-4, "none": 1.0}[scale]
        out += [(r - mean) / div for r in group]
    return out


def ref_loss(logp, old, ref, mask, adv, beta, lo, hi, loss_type, max_len):
    """Plain-Python TRL GRPO loss over lists of lists."""
    per_seq, total, count = [], 0.0, 0
    for b in range(len(logp)):
        seq_sum, seq_n = 0.0, 0
        for t in range(len(logp[b])):
            if not mask[b][t]:
                continue
            ratio = math.exp(logp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - lo), 1 + hi)
            loss = -min(ratio * adv[b], clipped * adv[b])
            if beta:
                d = ref[b][t] - logp[b][t]
                loss += beta * (math.exp(d) - d - 1)
            seq_sum, seq_n = seq_sum + loss, seq_n + 1
        per_seq.append(seq_sum / max(seq_n, 1))
        total, count = total + seq_sum, count + seq_n
    if loss_type == "grpo":
        return sum(per_seq) / len(per_seq)
    if loss_type == "dr_grpo":
        return total / (len(logp) * max_len)
    return total / max(count, 1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_reference(scale):
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)
    rewards[3:6] = 0.5  # a group with zero std gets advantage 0
    got = group_advantages(rewards, 3, scale)
    torch.testing.assert_close(got, torch.tensor(ref_advantages(rewards.tolist(), 3, scale), dtype=torch.float64))
    assert got[3:6].abs().max() == 0
    assert zero_std_fraction(rewards, 3) == 0.25


def _case(seed: int, B=4, T=7, H=16, V=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / 3
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return hidden, weight, targets, mask, adv


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta,with_old", [(0.0, False), (0.04, True), (0.3, False)])
def test_loss_matches_reference(loss_type, beta, with_old):
    hidden, weight, targets, mask, adv = _case(1)
    temp = 0.7
    logp = (hidden @ weight.T / temp).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    g = torch.Generator().manual_seed(2)
    old = logp + 0.3 * torch.randn(logp.shape, generator=g, dtype=torch.float64) if with_old else logp
    ref = logp + 0.2 * torch.randn(logp.shape, generator=g, dtype=torch.float64)
    loss, stats = grpo_loss(
        hidden, weight, targets, mask, adv, old_logp=old if with_old else None, ref_logp=ref, beta=beta,
        eps_low=0.2, eps_high=0.28, loss_type=loss_type, temperature=temp, max_completion_length=10, backend="naive",
    )
    want = ref_loss(logp.tolist(), old.tolist(), ref.tolist(), mask.tolist(), adv.tolist(), beta, 0.2, 0.28, loss_type, 10)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-7)  # logp is float32


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_microbatches_over_ranks_equal_one_batch(loss_type):
    """Weighted micro-batch losses summed per rank, then averaged over ranks as FSDP averages
    gradients, equal the loss of the whole batch, for every split."""
    hidden, weight, targets, mask, adv = _case(3, B=8)
    kw = dict(beta=0.0, loss_type=loss_type, max_completion_length=9, backend="naive")
    whole, _ = grpo_loss(hidden, weight, targets, mask, adv, **kw)
    for world, micro in [(1, 3), (2, 3), (2, 1), (4, 2)]:
        per_rank = 8 // world
        total_tokens = int(mask.sum())
        combined = 0.0
        for r in range(world):
            starts = range(r * per_rank, (r + 1) * per_rank, micro)
            for s in starts:
                e = min(s + micro, (r + 1) * per_rank)
                part, _ = grpo_loss(hidden[s:e], weight, targets[s:e], mask[s:e], adv[s:e], **kw)
                w = microbatch_weight(loss_type, e - s, int(mask[s:e].sum()), 8, total_tokens, len(starts), world)
                combined += part.item() * w
        assert combined / world == pytest.approx(whole.item(), rel=1e-5), (world, micro)

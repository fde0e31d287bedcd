"""Run under torchrun by test_distributed.py: one GRPO update on a fixed global batch, this rank
taking its share; rank 0 writes the loss and the full updated weights to argv[1]."""

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.kernels.linear_logprobs import default_backend  # noqa: E402
from socialr1.config import TrainConfig, parse  # noqa: E402
from socialr1.rollout import Rollout, pad_left, stop_mask  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402
from socialr1.warmstart import gold_completions  # noqa: E402

GROUP, PROMPTS = 2, 4


def fixed_batch(trainer: Trainer) -> tuple[Rollout, torch.Tensor]:
    """8 rows: each prompt's gold completion, and the same cut short (ragged lengths)."""
    gold = gold_completions(trainer.tokenizer, trainer.items[:PROMPTS], trainer.cfg.sip)
    comps = [c[: len(c) // (1 + k)] for c in gold for k in range(GROUP)]
    width = max(map(len, comps))
    comp = torch.tensor([c + [trainer.pad_id] * (width - len(c)) for c in comps])
    cmask = stop_mask(comp, trainer.stop_ids) * (torch.arange(width) < torch.tensor([[len(c)] for c in comps]))
    ids, mask = pad_left([p for p in trainer.prompts[:PROMPTS] for _ in range(GROUP)], trainer.pad_id)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, 0.3, -0.3])
    return Rollout(ids, mask, comp, cmask, torch.arange(PROMPTS).repeat_interleave(GROUP)), adv


def main(out: str, cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    trainer.setup()
    batch, adv = fixed_batch(trainer)
    n = len(batch) // trainer.world.size
    lo = trainer.world.rank * n
    metrics = trainer.update(batch.rows(lo, lo + n), adv[lo : lo + n])
    state = get_model_state_dict(trainer.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.world.is_main:
        torch.save({"metrics": metrics, "state": state, "backend": default_backend(trainer.world.device)}, out)
    trainer.close()


if __name__ == "__main__":
    out = sys.argv[1]
    main(out, parse(sys.argv[2:]))

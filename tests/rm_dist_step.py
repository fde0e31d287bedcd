"""Run under torchrun by test_reward_model.py (and in-process for 1 rank): the first reward-model
steps, each rank taking its share of the pairs; rank 0 writes the step metrics and the full
updated weights to argv[1]."""

import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.reward_model.config import parse  # noqa: E402
from socialr1.reward_model.trainer import RMTrainer  # noqa: E402


def first_steps(trainer: RMTrainer) -> dict:
    trainer.setup()
    micro_batches = len(trainer.micro_batches(trainer.pair_indices(0)))
    metrics = [trainer.step(s) for s in range(trainer.cfg.steps)]
    state = get_model_state_dict(trainer.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"metrics": metrics, "state": state, "micro_batches": micro_batches}


if __name__ == "__main__":
    trainer = RMTrainer(parse(sys.argv[2:]))
    result = first_steps(trainer)
    if trainer.world.is_main:
        torch.save(result, sys.argv[1])
    trainer.close()

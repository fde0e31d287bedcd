"""train.py with test hooks, never user flags: `python tests/hooked_train.py HOOKS_JSON train-args...`
(train-args may start with `reward-model`: the hooks reach both trainers).

HOOKS_JSON keys (all optional):
  kill_in_save: "checkpoint-N"    SIGKILL this process while writing that checkpoint, after its
                                  training state is written, before it is renamed into place
  signal_at_step: [step, rank, "SIGTERM", times]   at the start of `step`, that rank sends itself
                                  the signal `times` times
  nan_loss_steps: [steps]         the loss of every micro-batch of those steps is NaN
  failed_frac: {step: fraction}   the reward's score dict carries "failed", 1 on the first
                                  `fraction` of each rank's rows at that step (GRPO)
  slow_step: [step, seconds, path]  make that step slow: each decode step (GRPO) or micro-batch
                                  (reward model) sleeps `seconds`; rank 0 creates `path` when the
                                  step begins"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from socialr1 import checkpoint  # noqa: E402
from socialr1.policy import Policy  # noqa: E402
from socialr1.reward_model.trainer import RMTrainer  # noqa: E402
from socialr1.rewards import SIPReward  # noqa: E402
from socialr1.rollout import engine  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402

CURRENT = {"step": -1}


def install(hooks: dict) -> None:
    slow = hooks.get("slow_step")

    def hook_step(cls: type) -> None:
        step = cls.step

        def hooked_step(self, n):
            CURRENT["step"] = n
            at = hooks.get("signal_at_step")
            if at and at[0] == n and at[1] == self.world.rank:
                for _ in range(at[3]):
                    os.kill(os.getpid(), getattr(signal, at[2]))
            if slow and slow[0] == n and self.world.is_main:
                Path(slow[2]).touch()
            return step(self, n)

        cls.step = hooked_step

    def slowed(fn):
        def wrapper(*args, **kwargs):
            if slow and slow[0] == CURRENT["step"]:
                time.sleep(slow[1])
            return fn(*args, **kwargs)
        return wrapper

    def nan_if_asked(value: torch.Tensor) -> torch.Tensor:
        return value * float("nan") if CURRENT["step"] in hooks.get("nan_loss_steps", ()) else value

    swap_in, loss, rm_loss, score = checkpoint._swap_in, Policy.loss, RMTrainer.loss, SIPReward.score

    def hooked_swap_in(tmp, directory):
        if directory.name == hooks.get("kill_in_save"):
            os.kill(os.getpid(), signal.SIGKILL)
        return swap_in(tmp, directory)

    def hooked_loss(self, *args, **kwargs):
        value, stats = loss(self, *args, **kwargs)
        return nan_if_asked(value), stats

    def hooked_score(self, ids, *args, **kwargs):
        out = score(self, ids, *args, **kwargs)
        frac = hooks.get("failed_frac", {}).get(str(CURRENT["step"]))
        if frac is not None:
            out["failed"] = (torch.arange(len(ids)) < frac * len(ids)).float()
        return out

    hook_step(Trainer)
    hook_step(RMTrainer)
    checkpoint._swap_in, Policy.loss, SIPReward.score = hooked_swap_in, hooked_loss, hooked_score
    RMTrainer.loss = lambda self, scores: nan_if_asked(rm_loss(self, scores))
    engine.decode_step = slowed(engine.decode_step)
    RMTrainer.pair_scores = slowed(RMTrainer.pair_scores)


if __name__ == "__main__":
    install(json.loads(sys.argv[1]))
    sys.argv = [str(Path(train.__file__)), *sys.argv[2:]]
    train.main()

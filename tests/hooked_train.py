"""train.py with test hooks, never user flags: `python tests/hooked_train.py HOOKS_JSON train-args...`.

HOOKS_JSON keys (all optional):
  kill_in_save: "checkpoint-N"    SIGKILL this process while writing that checkpoint, after its
                                  training state is written, before it is renamed into place
  signal_at_step: [step, rank, "SIGTERM", times]   at the start of `step`, that rank sends itself
                                  the signal `times` times
  nan_loss_steps: [steps]         the loss of every micro-batch of those steps is NaN
  failed_frac: {step: fraction}   the reward's score dict carries "failed", 1 on the first
                                  `fraction` of each rank's rows at that step"""

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from socialr1 import checkpoint  # noqa: E402
from socialr1.policy import Policy  # noqa: E402
from socialr1.rewards import SIPReward  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402

CURRENT = {"step": -1}


def install(hooks: dict) -> None:
    step, swap_in, loss, score = Trainer.step, checkpoint._swap_in, Policy.loss, SIPReward.score

    def hooked_step(self, n):
        CURRENT["step"] = n
        at = hooks.get("signal_at_step")
        if at and at[0] == n and at[1] == self.world.rank:
            for _ in range(at[3]):
                os.kill(os.getpid(), getattr(signal, at[2]))
        return step(self, n)

    def hooked_swap_in(tmp, directory):
        if directory.name == hooks.get("kill_in_save"):
            os.kill(os.getpid(), signal.SIGKILL)
        return swap_in(tmp, directory)

    def hooked_loss(self, *args, **kwargs):
        value, stats = loss(self, *args, **kwargs)
        return (value * float("nan"), stats) if CURRENT["step"] in hooks.get("nan_loss_steps", ()) else (value, stats)

    def hooked_score(self, ids, *args, **kwargs):
        out = score(self, ids, *args, **kwargs)
        frac = hooks.get("failed_frac", {}).get(str(CURRENT["step"]))
        if frac is not None:
            out["failed"] = (torch.arange(len(ids)) < frac * len(ids)).float()
        return out

    Trainer.step, checkpoint._swap_in, Policy.loss, SIPReward.score = hooked_step, hooked_swap_in, hooked_loss, hooked_score


if __name__ == "__main__":
    install(json.loads(sys.argv[1]))
    sys.argv = [str(Path(train.__file__)), *sys.argv[2:]]
    train.main()

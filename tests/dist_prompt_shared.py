"""Run under torchrun by test_distributed.py: on each rank's share of a fixed batch, the reference
log-probs and the loss gradients with each prompt computed once per group and with one full
sequence per row. Rank 0 writes both to argv[1]."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1 import distributed as D  # noqa: E402
from socialr1.config import parse  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402
from tests.dist_update import GROUP, fixed_batch  # noqa: E402


def main(out: str, args: list[str]) -> None:
    trainer = Trainer(parse(args))
    trainer.setup()
    batch, adv = fixed_batch(trainer)
    n = len(batch) // trainer.world.size
    lo = trainer.world.rank * n
    part, adv = batch.rows(lo, lo + n), adv[lo : lo + n]
    trainer.policy.train()
    results = {}
    for group in (1, GROUP):
        ref = trainer.logprobs(trainer.ref, part, group)
        trainer.opt.zero_grad(set_to_none=True)
        loss, _ = trainer.policy.loss(part, adv, None, ref, trainer.loss_settings, group)
        loss.backward()
        grads = {name: D.full_tensor(p.grad).clone() for name, p in trainer.policy.named_parameters()}
        results[group] = {"ref": D.all_gather_cat(ref[:, :8].contiguous()), "loss": D.all_gather_cat(loss.detach()[None]),
                          "grads": grads}
    if trainer.world.is_main:
        torch.save(results, out)
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""Run under torchrun (2 gloo ranks) by test_gpu_readiness.py: the Trainer in bf16 mixed precision,
and what its FSDP2 setup does; each rank writes what it saw to argv[1]/rank{R}.json."""

import inspect
import json
import sys
import time
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import socialr1.policy  # noqa: E402
from socialr1 import distributed as D  # noqa: E402
from socialr1.config import parse  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402
from tests.dist_update import fixed_batch  # noqa: E402


class NewBytes(TorchDispatchMode):
    """Bytes of every tensor an op creates (not views, not in-place results, not meta): an upper
    bound of what a block of code holds at once."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and _storage(t) not in seen:
                seen.add(_storage(t))
                self.total += _plain(t).untyped_storage().nbytes()
        return out


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


def _storage(t: torch.Tensor) -> int:
    t = _plain(t)
    return 0 if t.device.type == "meta" else t.untyped_storage().data_ptr()


def root_params_sharded(policy) -> bool:
    """The root group's own parameters (embeddings, norm, head) are DTensors only while sharded."""
    root = {id(p) for layer in policy.lm.model.layers for p in layer.parameters()}
    return all(isinstance(p, DTensor) for p in policy.parameters() if id(p) not in root)


def layers_sharded(policy) -> bool:
    return all(isinstance(p, DTensor) for layer in policy.lm.model.layers for p in layer.parameters())


def main(out: Path, args: list[str]) -> None:
    seen = {}
    real_loss = socialr1.policy.grpo_loss

    def recording_loss(*args, **kwargs):
        bound = inspect.signature(real_loss).bind(*args, **kwargs).arguments
        seen.update({k: str(bound[k].dtype) for k in ("hidden", "advantages", "old_logp", "ref_logp")})
        return real_loss(*args, **kwargs)

    socialr1.policy.grpo_loss = recording_loss
    trainer = Trainer(parse(args))
    trainer.setup()
    report = {"rank": trainer.world.rank}

    # Ranks take turns: each rank's load starts after the previous rank's ended.
    report["turn"] = D.in_turn(lambda: (time.time(), time.sleep(0.3), time.time())[::2])

    # The reference model: equal to the policy, built without a full copy on this rank.
    full_bytes = sum(p.numel() * p.element_size() for p in trainer.policy.parameters())
    with NewBytes() as new:
        twin = trainer._frozen_copy(trainer.policy)
    report["copy_bytes_over_full"] = new.total / full_bytes
    report["copy_equal"] = all(
        torch.equal(a.full_tensor(), b.full_tensor()) for a, b in zip(trainer.policy.parameters(), twin.parameters()))
    report["copy_buffers_equal"] = all(torch.equal(a, b) for a, b in zip(trainer.policy.buffers(), twin.buffers()))

    # Leaving `gathered` gives the root back its default (keep gathered after forward) and the
    # layers theirs (reshard). The rollout comes first, as in training: FSDP decides the root's
    # default at the first forward, which here runs inside `gathered`.
    batch, adv = fixed_batch(trainer)
    n = len(batch) // trainer.world.size
    lo = trainer.world.rank * n
    batch, adv = batch.rows(lo, lo + n), adv[lo : lo + n]
    trainer.rollout(0)
    trainer.logprobs(trainer.policy, batch)
    report["root_and_layers_sharded_after_forward"] = [root_params_sharded(trainer.policy), layers_sharded(trainer.policy)]

    # One update in bf16 mixed precision: what the loss received, and the reference's state after.
    metrics = trainer.update(batch, adv)
    report["loss_inputs"] = seen
    report["loss_finite"] = all(map(lambda v: v == v, metrics.values()))
    report["ref_sharded_after_update"] = root_params_sharded(trainer.ref) and layers_sharded(trainer.ref)
    (out / f"rank{trainer.world.rank}.json").write_text(json.dumps(report))
    trainer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])

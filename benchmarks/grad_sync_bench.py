"""Under FSDP2: reduce-scatter gradients after every micro-batch (--grpo.grad-sync every) or only
after the last one (last), timed on the same rollout batch, alternating, in one run.

    torchrun --nproc_per_node 2 benchmarks/grad_sync_bench.py          # 2 gloo ranks on CPU

Tiny Qwen3 (hidden 128, 4 layers), 4 prompts x 5 per rank, 64 new tokens, micro-batches of 5
(4 per optimizer step). Prints the median seconds of Trainer.update for each setting."""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.config import parse  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402

ROUNDS = 5


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["demo", "--data.synthetic", "64", "--data.eval-synthetic", "0", "--warmstart.steps", "0",
                "--model.tiny-hidden-size", "128", "--model.tiny-layers", "4", "--rollout.group-size", "5",
                "--rollout.max-new-tokens", "64", "--grpo.micro-batch-size", "5", "--grpo.loss-type", "grpo",
                "--output-dir", tmp + "/run"]
        world = int(__import__("os").environ.get("WORLD_SIZE", 1))
        trainer = Trainer(parse(args + ["--rollout.prompts-per-step", str(4 * world)]))
        if hasattr(trainer, "setup"):
            trainer.setup()
        batch = trainer.rollout(0)
        adv = torch.linspace(-1, 1, len(batch))
        seconds: dict[str, list[float]] = {"every": [], "last": []}
        for round_ in range(ROUNDS + 1):  # round 0 warms up
            for mode in seconds:
                trainer.cfg.grpo.grad_sync = mode
                t0 = time.perf_counter()
                trainer.update(batch, adv)
                if round_:
                    seconds[mode].append(time.perf_counter() - t0)
        if trainer.world.is_main:
            print(f"{world} ranks, {len(batch)} rows per rank in {-(-len(batch) // 5)} micro-batches, median of {ROUNDS}:")
            for mode, s in seconds.items():
                print(f"  --grpo.grad-sync {mode:<5}  update {statistics.median(s):.3f} s")
        trainer.close()


if __name__ == "__main__":
    main()

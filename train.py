"""Train a Qwen3 model with SIP-reward GRPO.

    python train.py demo                              # offline CPU demo, a few minutes
    torchrun --nproc_per_node 8 train.py socialr1-4b  # the paper's recipe on 8 GPUs
    torchrun --nproc_per_node 8 train.py              # the same: socialr1-4b is the default preset
    python train.py socialr1-4b --help                # every setting, with its default

SIGTERM or Ctrl-C stops within a few seconds with a resumable checkpoint (a step whose update has not
begun is dropped and redone on resume; Ctrl-C twice: at once); `--resume auto` continues from the
newest complete checkpoint. Both commands, GRPO and reward model, stop and resume alike.

    python train.py socialr1-4b --plan                # memory per GPU and step time, predicted on a CPU
    python train.py reward-model rm-demo              # the SIP content reward model (pairwise), CPU demo
    torchrun --nproc_per_node 8 train.py reward-model rm-qwen3-4b --data.path pairs.jsonl
"""

import os
import shlex
import sys
from typing import Sequence

from socialr1.config import ConfigError, parse
from socialr1.data import DataError
from socialr1.models import ModelLoadError
from socialr1.plan import main as plan
from socialr1.reward_model.config import parse as parse_reward_model
from socialr1.reward_model.trainer import RMTrainer
from socialr1.run import RunStopped
from socialr1.trainer import Trainer


def resume_command(script: str, argv: Sequence[str], world_size: int) -> str:
    """The command line that continues this run: the same flags, with --resume auto."""
    args, skip = [], False
    for a in argv:
        if skip or a == "--overwrite" or a.startswith("--resume="):
            skip = False
            continue
        skip = a == "--resume"
        if not skip:
            args.append(a)
    launcher = ["torchrun", "--nproc_per_node", str(world_size)] if world_size > 1 else ["python"]
    return shlex.join([*launcher, script, *args, "--resume", "auto"])


def main(argv: Sequence[str] | None = None) -> None:
    """Every bad input ends here as one line and exit status 1, with no traceback; under torchrun
    only rank 0 prints it (every rank meets the same error), the others exit 1 quietly."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["plan"] or "--plan" in argv:
            return plan(argv)
        if argv[:1] == ["reward-model"]:
            trainer = RMTrainer(parse_reward_model(argv[1:], description=__doc__))
        else:
            trainer = Trainer(parse(argv, description=__doc__))
        try:
            finished = trainer.train()
        finally:
            trainer.close()
    except (ConfigError, DataError, ModelLoadError, RunStopped) as e:
        sys.exit(f"error: {e}" if os.environ.get("RANK", "0") == "0" else 1)
    if not finished and trainer.world.is_main:
        print(f"to resume: {resume_command(sys.argv[0], argv, trainer.world.size)}", flush=True)
        if trainer.world.size > 1:
            took = trainer.run.stop_save_seconds
            wrote = "" if took is None else f"the stop wrote its checkpoint in {took:.0f} s; "
            print(f"note: {wrote}torchrun kills workers "
                  "that take longer than its --shutdown-timeout (default 30 s), and exits 1 itself after "
                  "forwarding a signal even when every rank stopped cleanly (exit 0)", flush=True)


if __name__ == "__main__":
    main()

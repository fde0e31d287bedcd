"""Train a Qwen3 model with SIP-reward GRPO.

    python train.py demo                              # offline CPU demo, a few minutes
    torchrun --nproc_per_node 8 train.py socialr1-4b  # the paper's recipe on 8 GPUs
    torchrun --nproc_per_node 8 train.py              # the same: socialr1-4b is the default preset
    python train.py socialr1-4b --help                # every setting, with its default

    python train.py reward-model rm-demo              # the SIP content reward model (pairwise), CPU demo
    torchrun --nproc_per_node 8 train.py reward-model rm-qwen3-4b --data.path pairs.jsonl
"""

import sys

from socialr1.config import ConfigError, TrainConfig, parse
from socialr1.data import DataError
from socialr1.models import ModelLoadError
from socialr1.reward_model.config import RMConfig
from socialr1.reward_model.config import parse as parse_reward_model
from socialr1.reward_model.trainer import RMTrainer
from socialr1.trainer import Trainer


def main(cfg: TrainConfig | RMConfig) -> None:
    trainer = RMTrainer(cfg) if isinstance(cfg, RMConfig) else Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["reward-model"]:
        cfg = parse_reward_model(sys.argv[2:], description=__doc__)
    else:
        cfg = parse(description=__doc__)
    try:
        main(cfg)
    except (ConfigError, DataError, ModelLoadError) as e:
        sys.exit(f"error: {e}")

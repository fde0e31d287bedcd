"""Train a Qwen3 model with SIP-reward GRPO.

    python train.py demo                              # offline CPU demo, a few minutes
    torchrun --nproc_per_node 8 train.py socialr1-4b  # the paper's recipe on 8 GPUs
    python train.py socialr1-4b --help                # every setting, with its default
"""

import tyro

from socialr1.config import PRESETS, TrainConfig
from socialr1.trainer import Trainer


def main(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    main(tyro.extras.overridable_config_cli(PRESETS, description=__doc__))

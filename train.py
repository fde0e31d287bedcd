"""Train a Qwen3 model with SIP-reward GRPO.

    python train.py demo                              # offline CPU demo, a few minutes
    torchrun --nproc_per_node 8 train.py socialr1-4b  # the paper's recipe on 8 GPUs
    torchrun --nproc_per_node 8 train.py              # the same: socialr1-4b is the default preset
    python train.py socialr1-4b --help                # every setting, with its default
"""

import sys

from socialr1.config import ConfigError, TrainConfig, parse
from socialr1.data import DataError
from socialr1.models import ModelLoadError
from socialr1.trainer import Trainer


def main(cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    cfg = parse(description=__doc__)
    try:
        main(cfg)
    except (ConfigError, DataError, ModelLoadError) as e:
        sys.exit(f"error: {e}")

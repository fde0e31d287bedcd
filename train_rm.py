"""Train the SIP content reward model (Bradley-Terry on preference pairs) for `--reward.content model`.

    python train_rm.py rm-demo                                  # offline CPU demo on generated pairs
    torchrun --nproc_per_node 8 train_rm.py rm-qwen3-4b --data.path pairs.jsonl
    python train_rm.py rm-qwen3-4b --help                       # every setting, with its default
"""

import sys

from socialr1.config import ConfigError
from socialr1.data import DataError
from socialr1.models import ModelLoadError
from socialr1.reward_model.config import RMConfig, parse
from socialr1.reward_model.trainer import RMTrainer


def main(cfg: RMConfig) -> None:
    trainer = RMTrainer(cfg)
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

"""Run under torchrun by test_distributed.py: one Trainer.step on every rank. Each rank writes what
it trained on to argv[1]-<rank>.pt: the prompts promised to it, its rows' items and prompts, the
prompts encoded afresh, its rows' rewards and the advantages Trainer.step handed to Trainer.update."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.config import TrainConfig, parse  # noqa: E402
from socialr1.prompts import encode_prompts  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402
from tests.test_settings import rows_of, spy_update  # noqa: E402

STEP = 1


def main(out: str, cfg: TrainConfig) -> None:
    trainer = Trainer(cfg)
    trainer.setup()
    calls = spy_update(trainer)
    trainer.step(STEP)
    batch, advantages = calls[0]
    promised = trainer.prompt_indices(STEP)
    rewards = trainer.reward.score(batch.completion_ids, batch.completion_mask, trainer.features, batch.item_index, STEP)
    torch.save({
        "promised": promised,
        "item_index": batch.item_index.tolist(),
        "row_prompts": [p.tolist() for p, _ in rows_of(batch)],
        "encoded": encode_prompts(trainer.tokenizer, [trainer.items[i] for i in promised], cfg.sip),
        "rewards": rewards["total"],
        "advantages": advantages,
    }, f"{out}-{trainer.world.rank}.pt")
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], parse(sys.argv[2:]))

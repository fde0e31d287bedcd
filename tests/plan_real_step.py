"""Run under torchrun by test_plan.py: the plan's step on real tensors in a real gloo world of
WORLD_SIZE ranks (`record(fake=False)`); rank 0 writes each phase's memory by category to argv[1]."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.config import parse  # noqa: E402
from socialr1.plan.config import PlanConfig  # noqa: E402
from socialr1.plan.run import record  # noqa: E402

if __name__ == "__main__":
    recorded = record(parse(sys.argv[2:]), PlanConfig(world_size=int(os.environ["WORLD_SIZE"])), fake=False)
    if os.environ["RANK"] == "0":
        Path(sys.argv[1]).write_text(json.dumps(recorded.memory))

"""What a run shows: TensorBoard scalars and text, a metrics.jsonl line per step, a progress bar.
Only the main rank writes; the others get a logger that does nothing."""

import json
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm


class RunLog:
    def __init__(self, output_dir: Path, total_steps: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(output_dir / "tb"))
        self.jsonl = (output_dir / "metrics.jsonl").open("a")
        self.total_steps = total_steps
        self.bar: tqdm | None = None  # opened by skip() when the steps begin, after any warm-start bar

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            # Markdown code block keeps the SIP line structure readable in TensorBoard.
            self.writer.add_text(tag, "```\n" + text + "\n```", step)

    def skip(self, steps: int) -> None:
        """Open the progress bar at `steps` already done (0, or where a resumed run starts)."""
        if self.enabled:
            self.bar = tqdm(total=self.total_steps, initial=steps, desc="grpo", unit="step", dynamic_ncols=True)

    def advance(self, reward: float, seconds: float) -> None:
        if not self.enabled:
            return
        self.bar.set_postfix(reward=f"{reward:.3f}", step_s=f"{seconds:.1f}")
        self.bar.update(1)

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.close()
            self.writer.close()
            self.jsonl.close()


def mean_std(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """{prefix/mean, prefix/std} of a [N] tensor."""
    values = values.float()
    return {f"{prefix}/mean": values.mean().item(), f"{prefix}/std": values.std(unbiased=False).item()}

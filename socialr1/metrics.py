"""What a run shows: TensorBoard scalars and text, a metrics.jsonl line per step, a progress bar.
Only the main rank writes; the others get a logger that does nothing."""

import json
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm


class RunLog:
    """Prints from construction on; files and the progress bar open at start(), once setup has
    succeeded, so a run that fails to start writes nothing into its output dir."""

    def __init__(self, output_dir: Path, total_steps: int, enabled: bool, desc: str = "grpo", shown: str = "reward"):
        self.enabled, self.output_dir, self.total_steps = enabled, output_dir, total_steps
        self.desc, self.shown = desc, shown  # the bar's label and the name of the value it shows
        self.bar: tqdm | None = None

    def start(self, initial_step: int) -> None:
        """Open the event files and the bar at `initial_step`. A resumed run's files keep only the
        steps before it: those after its checkpoint are written again, once."""
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.output_dir / "tb"), purge_step=initial_step or None)
        path = self.output_dir / "metrics.jsonl"
        path.write_text(_rows_before(path, initial_step) if path.exists() else "")
        self.jsonl = path.open("a")
        self.bar = tqdm(total=self.total_steps, initial=initial_step, desc=self.desc, unit="step", dynamic_ncols=True)

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

    def advance(self, value: float, seconds: float) -> None:
        if not self.enabled:
            return
        self.bar.set_postfix({self.shown: f"{value:.3f}", "step_s": f"{seconds:.1f}"})
        self.bar.update(1)

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.enabled and self.bar is not None:
            self.bar.close()
            self.writer.close()
            self.jsonl.close()


def _rows_before(path: Path, step: int) -> str:
    """The lines of a metrics.jsonl for steps before `step`, less a last line cut short by a kill."""
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row["step"] < step:
            kept.append(line)
    return "".join(kept)


def mean_std(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """{prefix/mean, prefix/std} of a [N] tensor."""
    values = values.float()
    return {f"{prefix}/mean": values.mean().item(), f"{prefix}/std": values.std(unbiased=False).item()}

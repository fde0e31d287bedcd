"""curves.png at the end of a run, drawn from its metrics.jsonl: the reward and each of its
components per step, and eval accuracy (overall and per ability) at each eval."""

import json
from pathlib import Path

REWARD_PARTS = ("total", "format", "accuracy", "structure", "content", "length")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics: Path, out: Path) -> None:
    """Two panels: reward per GRPO step (mean over the step's samples), greedy eval accuracy per eval."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for part in REWARD_PARTS:
        points = [(r["step"], r[f"reward/{part}/mean"]) for r in rows if f"reward/{part}/mean" in r]
        if points:
            left.plot(*zip(*points), label=part, linewidth=2.5 if part == "total" else 1.2)
    left.set(title="reward per step (mean over the sampled rollouts)", xlabel="GRPO step", ylabel="mean reward")
    evals = [r for r in rows if "eval/accuracy" in r]
    names = sorted({k for r in evals for k in r if k.startswith("eval/accuracy/")})
    for name in ["eval/accuracy", *names]:
        points = [(r["step"], r[name]) for r in evals if name in r]
        overall = name == "eval/accuracy"
        if points:
            right.plot(*zip(*points), marker="o", label="all" if overall else name.split("/", 2)[2],
                       linewidth=2.5 if overall else 1.0, alpha=1.0 if overall else 0.7)
    if evals and "eval/chance" in evals[0]:
        right.axhline(evals[0]["eval/chance"], color="grey", linestyle=":", label="chance")
    for panel in (left, right):
        if panel.lines:
            panel.legend(fontsize=8)
    right.set(title="held-out accuracy (greedy)", xlabel="GRPO step", ylabel="accuracy", ylim=(0, 1))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)

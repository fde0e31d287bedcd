"""What the plan prints: memory per phase against the GPU, a roofline time per phase, and, when the
run does not fit, the smallest change that does (found by planning again)."""

import copy
from dataclasses import dataclass
from typing import Callable

from socialr1.config import TrainConfig
from socialr1.plan.config import GPU, GPUS, GiB, PlanConfig
from socialr1.plan.run import PHASES, TOTAL, Recorded

# Tracker categories (FSDPMemTracker's, and MemTracker's for the load) -> the table's columns.
COLUMNS = {
    "params": ("Sharded Param", "Parameter", "Buffer"),
    "gathered": ("Unsharded Param", "All Gather"),
    "grads": ("Sharded Grad", "Unsharded Grad", "Gradient", "Reduce Scatter"),
    "optimizer": ("OptState", "Optstate"),
    "activations": ("Activation", "Temp", "Inputs", "Other"),
}
LOWER_BOUND = (
    "Times are a lower bound: every op at the GPU's datasheet peak (FLOP/s or HBM bandwidth, whichever "
    "binds that op), collectives at NVLink bandwidth and fully overlapped with compute. Left out: kernel "
    "launch overhead and Python (eager decoding launches ~10 kernels per layer per token), the rewards "
    "(host work and any judge / reward-model service), imbalance between ranks, and data loading."
)


def by_column(snap: dict[str, int]) -> dict[str, int]:
    return {col: sum(snap.get(k, 0) for k in keys) for col, keys in COLUMNS.items()}


def rows(rec: Recorded) -> list[tuple[str, dict[str, int], int]]:
    """(phase, bytes per column, peak) in step order. The rollout's weights are gathered outside any
    forward, so the tracker files them under activations: they are moved to `gathered`."""
    out = []
    for phase in PHASES:
        snap = rec.memory.get(phase)
        if snap is None:
            continue
        cols = by_column(snap)
        if phase.startswith("rollout"):
            moved = min(rec.gathered_param_bytes, cols["activations"])
            cols["gathered"] += moved
            cols["activations"] -= moved
        out.append((phase, cols, snap.get(TOTAL, 0)))
    return out


def peak(rec: Recorded) -> int:
    return max(snap.get(TOTAL, 0) for snap in rec.memory.values())


@dataclass
class Timing:
    phase: str
    flops: int
    hbm_bytes: int
    comm_bytes: int
    seconds: float


def timings(rec: Recorded, gpu: GPU, world_size: int) -> list[Timing]:
    """Per phase: the op-by-op roofline, or the collectives' time at NVLink bandwidth (a ring moves
    (N - 1) / N of each gathered or scattered tensor through every GPU), whichever is longer."""
    out = []
    for phase in PHASES:
        work = rec.work.get(phase)
        if work is None:
            continue
        flops, nbytes = work.total()
        comm_s = work.comm_bytes * (world_size - 1) / world_size / gpu.nvlink
        out.append(Timing(phase, flops, nbytes, work.comm_bytes, max(work.roofline_s(gpu.bf16_flops, gpu.hbm), comm_s)))
    return out


def fits(rec: Recorded, gpu: GPU, headroom: float) -> bool:
    return peak(rec) <= gpu.memory * (1 - headroom)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}"


def render(name: str, cfg: TrainConfig, pc: PlanConfig, rec: Recorded) -> str:
    gpu = GPUS[pc.gpu]
    usable = gpu.memory * (1 - pc.headroom)
    lines = [
        f"plan: {name} on {pc.world_size} x {gpu.name} ({_gib(gpu.memory)} GiB; planning against "
        f"{_gib(usable)} GiB, {pc.headroom:.0%} kept for CUDA context, NCCL and fragmentation)",
        "assumed: " + "; ".join(rec.assumptions),
        "",
        "memory per rank (GiB) at each phase's peak; every rank alike (the worst case is the same on all)",
        "| phase | params (sharded) | gathered weights | grads | optimizer | activations, KV cache, temporaries | peak | of the GPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, cols, total in rows(rec):
        cells = ["-"] * 5 if phase == PHASES[0] else [_gib(v) for v in cols.values()]
        lines.append(f"| {phase} | " + " | ".join(cells) + f" | {_gib(total)} | {total / gpu.memory:.0%} |")
    lines.append("(load and shard: the whole float32 model is on the device before fully_shard splits it; its "
                 "categories are not split)")
    top = peak(rec)
    verdict = "fits" if top <= usable else "does NOT fit"
    lines += ["", f"peak {_gib(top)} GiB per GPU: {verdict} in {_gib(usable)} GiB", ""]
    lines += ["time per step (roofline lower bound, this GPU)",
              "| phase | TFLOP | HBM GB | collective GB | seconds |", "|---|---:|---:|---:|---:|"]
    total_s = 0.0
    for t in timings(rec, gpu, pc.world_size):
        total_s += t.seconds
        lines.append(f"| {t.phase} | {t.flops / 1e12:.2f} | {t.hbm_bytes / 1e9:.1f} | {t.comm_bytes / 1e9:.2f} | {t.seconds:.2f} |")
    lines += [f"step >= {total_s:.1f} s; {cfg.steps} steps >= {total_s * cfg.steps / 3600:.2f} h", LOWER_BOUND,
              f"GPU figures: {gpu.source}"]
    return "\n".join(lines)


# Changes the fit search tries, each on top of the last, smallest first: (flag, apply, applicable).
Change = tuple[str, Callable[[TrainConfig], None], Callable[[TrainConfig, PlanConfig], bool]]


def _halve_micro_batch(c: TrainConfig) -> None:
    c.grpo.micro_batch_size = max(1, c.grpo.micro_batch_size // 2)


def _halve_prompts(c: TrainConfig) -> None:
    c.rollout.prompts_per_step //= 2


def _halve_tokens(c: TrainConfig) -> None:
    c.rollout.max_new_tokens = max(1, c.rollout.max_new_tokens // 2)


CHANGES: list[Change] = [
    ("--model.activation-checkpointing", lambda c: setattr(c.model, "activation_checkpointing", True),
     lambda c, pc: not c.model.activation_checkpointing),
    ("--grpo.micro-batch-size", _halve_micro_batch, lambda c, pc: c.grpo.micro_batch_size > 1),
    ("--rollout.prompts-per-step", _halve_prompts,
     lambda c, pc: c.rollout.prompts_per_step // 2 >= pc.world_size and (c.rollout.prompts_per_step // 2) % pc.world_size == 0),
    ("--rollout.max-new-tokens", _halve_tokens, lambda c, pc: c.rollout.max_new_tokens > 1),
]


def _flag_value(flag: str, c: TrainConfig) -> str:
    section, name = flag[2:].split(".")
    return str(getattr(getattr(c, section), name.replace("-", "_")))


def fit_search(cfg: TrainConfig, pc: PlanConfig, plan: Callable[[TrainConfig], Recorded], max_plans: int = 6) -> tuple[TrainConfig, Recorded] | None:
    """Plan again with smaller settings until one fits: each round applies the change, among those
    still possible, whose new plan has the lowest peak. None when nothing tried fits."""
    gpu, current = GPUS[pc.gpu], copy.deepcopy(cfg)
    for _ in range(max_plans):
        tried = []
        for flag, apply, possible in CHANGES:
            if not possible(current, pc):
                continue
            candidate = copy.deepcopy(current)
            apply(candidate)
            rec = plan(candidate)
            if fits(rec, gpu, pc.headroom):
                return candidate, rec
            tried.append((peak(rec), flag, candidate))
            break  # one change per round: the cheapest first keeps the search to a few plans
        if not tried:
            return None
        current = min(tried, key=lambda t: t[0])[2]
    return None


def changed_flags(before: TrainConfig, after: TrainConfig) -> str:
    out = []
    for flag, _, _ in CHANGES:
        if _flag_value(flag, before) != _flag_value(flag, after):
            value = _flag_value(flag, after)
            out.append(flag if value == "True" else f"{flag} {value}")
    return " ".join(out)

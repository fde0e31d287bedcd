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
              f"GPU figures: {gpu.source}", "", "the same run on each GPU (same memory; times at each GPU's peaks)"]
    return "\n".join(lines + gpu_table(cfg, pc, rec))


def gpu_table(cfg: TrainConfig, pc: PlanConfig, rec: Recorded) -> list[str]:
    lines = ["| GPU | memory GiB | peak GiB | fits | step s (lower bound) | run h (lower bound) |", "|---|---:|---:|---|---:|---:|"]
    for name, gpu in GPUS.items():
        step_s = sum(t.seconds for t in timings(rec, gpu, pc.world_size))
        lines.append(f"| {name} | {_gib(gpu.memory)} | {_gib(peak(rec))} | {'yes' if fits(rec, gpu, pc.headroom) else 'no'} "
                     f"| {step_s:.1f} | {step_s * cfg.steps / 3600:.2f} |")
    return lines


# What the fit search may change, smallest first, as (flag, apply, possible). Which ones it tries
# depends on the phase at the peak: training memory shrinks with checkpointing and smaller
# micro-batches; the rollout's (the KV cache) with fewer prompts per rank or shorter completions.
Change = tuple[str, Callable[[TrainConfig], None], Callable[[TrainConfig, PlanConfig], bool]]


def _halve_micro_batch(c: TrainConfig) -> None:
    c.grpo.micro_batch_size = max(1, c.grpo.micro_batch_size // 2)


def _halve_prompts(c: TrainConfig) -> None:
    c.rollout.prompts_per_step //= 2


def _halve_tokens(c: TrainConfig) -> None:
    c.rollout.max_new_tokens = max(1, c.rollout.max_new_tokens // 2)


CHECKPOINTING: Change = ("--model.activation-checkpointing", lambda c: setattr(c.model, "activation_checkpointing", True),
                         lambda c, pc: not c.model.activation_checkpointing)
MICRO_BATCH: Change = ("--grpo.micro-batch-size", _halve_micro_batch, lambda c, pc: c.grpo.micro_batch_size > 1)
PROMPTS: Change = ("--rollout.prompts-per-step", _halve_prompts,
                   lambda c, pc: (c.rollout.prompts_per_step // 2) % pc.world_size == 0 and c.rollout.prompts_per_step // 2 > 0)
TOKENS: Change = ("--rollout.max-new-tokens", _halve_tokens, lambda c, pc: c.rollout.max_new_tokens > 1)
CHANGES = [CHECKPOINTING, MICRO_BATCH, PROMPTS, TOKENS]
FOR_PHASE = {"old / ref log-probs": [CHECKPOINTING, MICRO_BATCH, PROMPTS, TOKENS], "update": [CHECKPOINTING, MICRO_BATCH, PROMPTS, TOKENS],
             "rollout: prefill": [PROMPTS, TOKENS], "rollout: decode": [PROMPTS, TOKENS], "reward": [PROMPTS, TOKENS]}


def peak_phase(rec: Recorded) -> str:
    return max(rec.memory, key=lambda p: rec.memory[p].get(TOTAL, 0))


def _flag_value(flag: str, c: TrainConfig) -> str:
    section, name = flag[2:].split(".")
    return str(getattr(getattr(c, section), name.replace("-", "_")))


def fit_search(cfg: TrainConfig, rec: Recorded, pc: PlanConfig, plan: Callable[[TrainConfig], Recorded],
               max_plans: int = 6) -> tuple[TrainConfig, Recorded] | None:
    """Plan again, one change at a time, until a plan fits: each round makes the smallest possible
    change against the phase at the current peak. None when no change is left (e.g. the load's
    peak, the whole float32 model on one GPU, does not fit) or after `max_plans` plans."""
    gpu, current = GPUS[pc.gpu], copy.deepcopy(cfg)
    for _ in range(max_plans):
        options = [ch for ch in FOR_PHASE.get(peak_phase(rec), []) if ch[2](current, pc)]
        if not options:
            return None
        current = copy.deepcopy(current)
        options[0][1](current)
        rec = plan(current)
        if fits(rec, gpu, pc.headroom):
            return current, rec
    return None


def changed_flags(before: TrainConfig, after: TrainConfig) -> str:
    out = []
    for flag, _, _ in CHANGES:
        if _flag_value(flag, before) != _flag_value(flag, after):
            value = _flag_value(flag, after)
            out.append(flag if value == "True" else f"{flag} {value}")
    return " ".join(out)

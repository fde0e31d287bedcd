"""Know before you rent: each GPU's memory and the step time of a run, predicted on a CPU by running
the trainer's own code on fake tensors (no storage) in a fake world of N ranks.

    python train.py plan socialr1-4b --plan.gpu a100-40gb      # any preset, any train flags
    python train.py socialr1-8b --plan --plan.world-size 8

run.py runs the phases (load and shard, rollout, reward, log-probs, update) through the real
`Trainer`; trace.py answers the code's host reads with the worst case and meters FLOPs and bytes;
report.py prints the tables and searches for a setting that fits."""

import sys
from typing import Sequence

import tyro

from socialr1.config import parse
from socialr1.plan.config import GPUS, PlanConfig
from socialr1.plan.report import changed_flags, fit_search, fits, render
from socialr1.plan.run import record

PLAN_BOOLS = ("--plan.fit", "--plan.no-fit")


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train flags, plan flags without their `plan.` prefix); `plan` as the first word and a bare
    `--plan` only ask for the plan."""
    argv = list(argv)
    if argv[:1] == ["plan"]:
        argv = argv[1:]
    train, plan, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--plan":
            i += 1
            continue
        if a.startswith("--plan."):
            plan.append("--" + a[len("--plan."):])
            if "=" not in a and a not in PLAN_BOOLS and i + 1 < len(argv):
                plan.append(argv[i + 1])
                i += 1
        else:
            train.append(a)
        i += 1
    return train, plan


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    train_args, plan_args = split_args(argv)
    cfg = parse(train_args, description=__doc__)
    pc = tyro.cli(PlanConfig, args=plan_args, description="--plan.* settings")
    name = next((a for a in train_args[:1] if not a.startswith("-")), "socialr1-4b")
    rec = record(cfg, pc)
    print(render(name, cfg, pc, rec), flush=True)
    if fits(rec, GPUS[pc.gpu], pc.headroom) or not pc.fit:
        return
    print("\nsearching for the smallest change that fits (planning again) ...", flush=True)
    found = fit_search(cfg, rec, pc, lambda c: record(c, pc))
    if found is None:
        print("nothing tried fits on this GPU at this world size: try a larger GPU or more ranks")
        return
    fitted, fitted_rec = found
    print(f"fits with: {changed_flags(cfg, fitted)}\n")
    print(render(name, fitted, pc, fitted_rec))

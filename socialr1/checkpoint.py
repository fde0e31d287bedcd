"""Checkpoints as plain Hugging Face model directories (safetensors, config, tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads, plus, for checkpoints taken during training, the state
to resume from (`train_state/`: sharded model and optimizer via torch.distributed.checkpoint,
scheduler, step, and each rank's RNG). Written under a temporary name and renamed, so a crash never
leaves a half-written directory under the final name."""

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from transformers import PreTrainedTokenizerBase

from socialr1.policy import Policy

TRAIN_STATE = "train_state"


def save_checkpoint(
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    dtype: torch.dtype,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    step: int = 0,
) -> None:
    """Collective: every rank calls it. Rank 0 writes the full weights; with an optimizer, every
    rank also writes its shards of the training state."""
    rank = dist.get_rank()
    tmp = directory.with_name(f".{directory.name}.partial")  # the same path on every rank
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        policy.lm.save_pretrained(tmp, state_dict={k.removeprefix("lm."): v.to(dtype) for k, v in full.items()})
        tokenizer.save_pretrained(tmp)
    if optimizer is not None and scheduler is not None:
        model_state, optim_state = get_state_dict(policy, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / TRAIN_STATE)
        torch.save(_rng_state(), tmp / TRAIN_STATE / f"rng-rank{rank}.pt")
        if rank == 0:
            meta = {"step": step, "scheduler": scheduler.state_dict(), "world_size": dist.get_world_size()}
            torch.save(meta, tmp / TRAIN_STATE / "trainer.pt")
    dist.barrier()
    if rank == 0:
        _swap_in(tmp, directory)
    dist.barrier()


def load_train_state(
    directory: Path,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Restore what save_checkpoint wrote; returns the number of steps already done."""
    state_dir = directory / TRAIN_STATE
    if not (state_dir / "trainer.pt").is_file():
        raise FileNotFoundError(
            f"{directory}: no {TRAIN_STATE}/ to resume from; only checkpoints written during training "
            "(checkpoint-N, see --save-every) hold the optimizer state"
        )
    meta = torch.load(state_dir / "trainer.pt")
    model_state, optim_state = get_state_dict(policy, optimizer)
    dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=state_dir)
    set_state_dict(policy, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    scheduler.load_state_dict(meta["scheduler"])
    # Sampling continues exactly only on the same number of ranks; otherwise it is reseeded.
    rng = state_dir / f"rng-rank{dist.get_rank()}.pt"
    if meta["world_size"] == dist.get_world_size() and rng.is_file():
        _set_rng_state(torch.load(rng))
    return meta["step"]


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _swap_in(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    # A directory cannot be renamed onto a non-empty one: move the old one aside first.
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old)

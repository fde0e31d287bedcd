"""Checkpoints as plain Hugging Face model directories (safetensors, config, tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads, plus, for checkpoints taken during training, the state
to resume from (`train_state/`: sharded model and optimizer via torch.distributed.checkpoint,
scheduler, step, and each rank's RNG). Written under a temporary name and renamed, so a crash never
leaves a half-written directory under the final name."""

import copy
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch import nn
from transformers import PreTrainedTokenizerBase

from socialr1.config import ConfigError
from socialr1.policy import Policy

TRAIN_STATE = "train_state"
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")  # temporary directories start with a dot: never matched


def save_checkpoint(
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    dtype: torch.dtype,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    meta: dict | None = None,
    frozen: dict[str, nn.Module] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Collective: every rank calls it. The weights are written in `dtype`; with an optimizer,
    every rank also writes its shards of the training state (with those of the `frozen` models, and
    its random state: `rng`, else the current one), and rank 0 the trainer's `meta` (the step first
    of all) with the scheduler."""
    rank = dist.get_rank()
    tmp = directory.with_name(f".{directory.name}.partial")  # the same path on every rank
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    # Every rank writes its own shards as safetensors and rank 0 joins them file to file: the full
    # model is never gathered into one process's memory (benchmarks/RESULTS.md: export memory).
    # Tied weights (embedding = LM head) are one parameter under two names: named_parameters lists it once.
    unique = {name for name, _ in (*policy.named_parameters(), *policy.named_buffers())}
    weights = {k.removeprefix("lm."): v.to(dtype) for k, v in get_model_state_dict(policy).items() if k in unique}
    dcp.save(weights, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp), save_distributed=True, enable_consolidation=True))
    del weights
    if rank == 0:
        shutil.rmtree(tmp / "sharded")  # the per-rank files, now consolidated
        config = copy.deepcopy(policy.lm.config)
        config.dtype = dtype  # the dtype the weights are saved in, not the float32 master weights'
        config.architectures = [type(policy.lm).__name__]  # servers (vLLM) pick the model class by it
        config.save_pretrained(tmp)
        if getattr(policy.lm, "generation_config", None) is not None:  # a classifier (reward model) has none
            policy.lm.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    if optimizer is not None and scheduler is not None:
        frozen = frozen or {}
        model_state, optim_state = get_state_dict(policy, optimizer)
        others = {name: get_model_state_dict(m) for name, m in frozen.items()}
        dcp.save({"model": model_state, "optim": optim_state, "frozen": others}, checkpoint_id=tmp / TRAIN_STATE)
        torch.save(rng or rng_state(), tmp / TRAIN_STATE / f"rng-rank{rank}.pt")
        if rank == 0:
            state = {**(meta or {}), "scheduler": scheduler.state_dict(), "world_size": dist.get_world_size(),
                     "frozen": sorted(frozen)}
            torch.save(state, tmp / TRAIN_STATE / "trainer.pt")
    dist.barrier()
    if rank == 0:
        _swap_in(tmp, directory)
    dist.barrier()


def read_train_meta(directory: Path) -> dict:
    """The trainer's meta of a resumable checkpoint (cheap: no tensors of the model)."""
    state = directory / TRAIN_STATE / "trainer.pt"
    if not state.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {TRAIN_STATE}/ (training state) in it"
        raise ConfigError(
            f"--resume {directory}: {what}; only checkpoint-N directories written during training "
            "(see --save-every) can be resumed, or pass --resume auto"
        )
    return torch.load(state, weights_only=False)


def load_train_state(
    directory: Path,
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    frozen: dict[str, nn.Module] | None = None,
) -> dict:
    """Restore what save_checkpoint wrote, into `frozen` too for the models the checkpoint holds;
    returns the trainer's meta."""
    state_dir = directory / TRAIN_STATE
    meta = read_train_meta(directory)
    model_state, optim_state = get_state_dict(policy, optimizer)
    held = {name: m for name, m in (frozen or {}).items() if name in meta.get("frozen", ())}
    others = {name: get_model_state_dict(m) for name, m in held.items()}
    dcp.load({"model": model_state, "optim": optim_state, **({"frozen": others} if others else {})}, checkpoint_id=state_dir)
    set_state_dict(policy, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    for name, m in held.items():
        set_model_state_dict(m, others[name])
    scheduler.load_state_dict(meta["scheduler"])
    # Sampling continues exactly only on the same number of ranks; otherwise it is reseeded.
    rng = state_dir / f"rng-rank{dist.get_rank()}.pt"
    if meta["world_size"] == dist.get_world_size() and rng.is_file():
        _set_rng_state(torch.load(rng))
    return meta


def resumable_checkpoints(output_dir: Path) -> list[Path]:
    """The complete checkpoint-N directories that hold training state, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_RE.fullmatch(p.name))]
    return [p for _, p in sorted(found) if (p / TRAIN_STATE / "trainer.pt").is_file()]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = resumable_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoint-N directories (final/ is not one)."""
    for old in resumable_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old)


def rng_state() -> dict[str, torch.Tensor]:
    """This process's random state (CPU, and CUDA when there is one)."""
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

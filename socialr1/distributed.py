"""torch.distributed plumbing: process group, FSDP2 sharding and the few collectives we use.

A plain `python train.py` runs as a world of one, so there is one code path for 1 or N ranks."""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: str) -> World:
    """Join the torchrun group (env:// variables) or start a world of one in-process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank = dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return World(rank, dist.get_world_size(), torch.device("cuda", local))
    return World(rank, dist.get_world_size(), torch.device("cpu"))


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(
    model: nn.Module, layers: nn.ModuleList, param_dtype: torch.dtype | None, methods: tuple[str, ...]
) -> None:
    """FSDP2: one shard group per decoder layer, the rest (embeddings, norm, head) in the root.
    `methods` are entry points other than forward that must all-gather the root's parameters."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for name in methods:
        register_fsdp_forward_method(model, name)


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep every shard group all-gathered for the whole block: decoding then runs hundreds of
    forwards with no collective at all, instead of one all-gather per layer per token."""
    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for g in groups:
        g.unshard()
        g.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for g in groups:
            g.reshard()
            g.set_reshard_after_forward(True, recurse=False)


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate an equally shaped tensor from every rank along dim 0, in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (e.g. the grad norm of sharded parameters), or t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t

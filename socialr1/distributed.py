"""torch.distributed plumbing: process group, FSDP2 sharding and the few collectives we use.

A plain `python train.py` runs as a world of one, so there is one code path for 1 or N ranks."""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

# Ranks decode independently and meet again only after the rollout (and eval), so one rank may
# wait in a collective for a whole rollout of the slowest one: NCCL's 10-minute default is too short.
TIMEOUT = timedelta(minutes=60)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device
    owns_group: bool  # created by init_world, so close_world ends it (a caller's group is left as found)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world(device: str) -> World:
    """Join the torchrun group (env:// variables) or start a world of one in-process."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
    here = torch.device("cpu")
    if use_cuda:
        # Before the group exists: NCCL binds each rank's communicator to the current device.
        here = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(here)
    owns = not dist.is_initialized()
    if owns:
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        kwargs = dict(timeout=TIMEOUT, device_id=here if use_cuda else None)
        if "RANK" in os.environ:
            dist.init_process_group(backend, **kwargs)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    return World(dist.get_rank(), dist.get_world_size(), here, owns)


def close_world(world: World) -> None:
    if world.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def in_turn(load: Callable[[], T]) -> T:
    """Run `load` on one rank at a time, rank 0 first: host memory holds one full model at a time,
    not one per rank, and a hub download happens once (rank 0) before the others read the cache."""
    result = None
    for rank in range(dist.get_world_size()):
        if rank == dist.get_rank():
            result = load()
        dist.barrier()
    return result


def shard(
    model: nn.Module,
    layers: nn.ModuleList,
    param_dtype: torch.dtype | None,
    methods: tuple[str, ...],
    reshard_root: bool = False,
) -> None:
    """FSDP2: one shard group per decoder layer, the rest (embeddings, norm, head) in the root.
    `methods` are entry points other than forward that must all-gather the root's parameters.
    reshard_root: free the root's gathered weights after each forward (for a model that never runs
    backward, e.g. the reference model; FSDP's default keeps them for the backward)."""
    layer_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # The root's entry points take advantages and old/reference log-probs: casting them to bf16
    # would round logp -10 by ~0.02, a floor under the KL and noise in the ratio.
    root_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for layer in layers:
        fully_shard(layer, mp_policy=layer_mp)
    fully_shard(model, mp_policy=root_mp, reshard_after_forward=True if reshard_root else None)
    for name in methods:
        register_fsdp_forward_method(model, name)


def sharded_copy(model: nn.Module, build: Callable[[], nn.Module], layers: Callable[[nn.Module], nn.ModuleList],
                 param_dtype: torch.dtype | None, methods: tuple[str, ...]) -> nn.Module:
    """A frozen copy of the sharded `model` that never exists in full on any rank: `build()` makes
    the same architecture on the meta device, it is sharded as `model` was, and each rank copies
    its own shards (and the buffers) over. Its root reshards after every forward."""
    with torch.device("meta"):
        twin = build()
    shard(twin, layers(twin), param_dtype, methods, reshard_root=True)
    device = next(model.parameters()).device
    twin.to_empty(device=device)
    sources = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, t in [*twin.named_parameters(), *twin.named_buffers()]:
            _local(t).copy_(_local(sources[name]))
    return twin.requires_grad_(False)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Keep every shard group all-gathered for the whole block: decoding then runs hundreds of
    forwards with no collective at all, instead of one all-gather per layer per token. On leaving,
    each group gets back its own reshard-after-forward setting (the root's default is to keep)."""
    model._get_fsdp_state()._lazy_init()  # decides the root's default, which the block must not
    groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = [_reshard_setting(g) for g in groups]
    for g in groups:
        g.unshard()
        g.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for g, setting in zip(groups, saved):
            g.reshard()
            _restore_reshard_setting(g, setting)


# FSDP2 has a setter for reshard-after-forward but no getter: these read and write the state that
# `set_reshard_after_forward` writes (torch 2.13; tests/test_gpu_readiness.py checks the behaviour).
def _reshard_setting(g: FSDPModule) -> tuple[bool | None, list]:
    state = g._get_fsdp_state()
    return state._auto_reshard_after_forward, [pg.post_forward_mesh_info for pg in state._fsdp_param_groups]


def _restore_reshard_setting(g: FSDPModule, setting: tuple[bool | None, list]) -> None:
    state = g._get_fsdp_state()
    state._auto_reshard_after_forward, infos = setting
    for pg, info in zip(state._fsdp_param_groups, infos):
        pg.post_forward_mesh_info = info


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

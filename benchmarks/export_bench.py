"""Host memory of the Hugging Face export of a sharded model, on rank 0: a full-state-dict gather
then `save_pretrained` (what `save_checkpoint` did before), against `save_checkpoint` now: DCP's
HuggingFaceStorageWriter, every rank writing its own shards and rank 0 joining them file to file.

    torchrun --nproc_per_node 2 benchmarks/export_bench.py --hidden 1024 --layers 8

Peak = RSS high-water mark of rank 0 during the export minus its RSS just before (1 kHz sampler,
glibc mmap threshold fixed so freed tensors leave RSS), in MiB. The model is a random Qwen3 of the
given size with float32 master weights, exported in bfloat16 as training does on GPU."""

import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import tyro
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.kernel_bench import _RssSampler  # noqa: E402
from socialr1 import distributed as D  # noqa: E402
from socialr1.checkpoint import save_checkpoint  # noqa: E402
from socialr1.policy import Policy  # noqa: E402
from socialr1.tiny import build_model, build_tokenizer  # noqa: E402

MiB = 1 << 20


@dataclass
class Config:
    hidden: int = 1024
    """Hidden size of the random Qwen3."""
    layers: int = 8
    """Decoder layers."""
    vocab: int = 32_000
    """Embedding rows (the tokenizer is tiny; the embedding is padded to this many rows)."""


def main(cfg: Config) -> None:
    world = D.init_world("cpu")
    tokenizer = build_tokenizer(["a small corpus for a tokenizer the export saves beside the weights"], 300)
    lm = build_model(tokenizer, cfg.hidden, cfg.layers, num_heads=cfg.hidden // 64)
    lm.resize_token_embeddings(cfg.vocab, mean_resizing=False)
    params = sum(p.numel() for p in lm.parameters())
    policy = Policy(lm)
    D.shard(policy, lm.model.layers, None, Policy.FORWARD_METHODS)
    out = Path(tempfile.mkdtemp(prefix="export_bench_")) if world.is_main else None
    objs = [out]
    dist.broadcast_object_list(objs)
    out = objs[0]

    dist.barrier()
    t0 = time.perf_counter()
    with _RssSampler() as gather:
        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world.is_main:
            lm.save_pretrained(out / "gather", state_dict={k.removeprefix("lm."): v.to(torch.bfloat16) for k, v in full.items()})
        del full
    t_gather = time.perf_counter() - t0

    dist.barrier()
    t0 = time.perf_counter()
    with _RssSampler() as writer:
        save_checkpoint(policy, tokenizer, out / "dcp", torch.bfloat16)
    t_dcp = time.perf_counter() - t0
    dist.barrier()

    if world.is_main:
        a = load_file(out / "gather" / "model.safetensors")
        b = {}
        for f in sorted((out / "dcp").glob("*.safetensors")):
            b.update(load_file(f))
        same = set(a) - set(b) <= {"lm_head.weight"} and all(torch.equal(a[k], b[k]) for k in b)  # tied head: saved once
        print(f"ranks {world.size}, {params / 1e6:.0f}M parameters ({params * 4 / MiB:.0f} MiB float32, "
              f"{params * 2 / MiB:.0f} MiB bfloat16)")
        print(f"full-state-dict gather + save_pretrained: rank-0 peak +{(gather.peak - gather.base) / MiB:.0f} MiB, {t_gather:.1f} s")
        print(f"save_checkpoint (DCP HuggingFaceStorageWriter): rank-0 peak +{(writer.peak - writer.base) / MiB:.0f} MiB, "
              f"{t_dcp:.1f} s; same tensors as the gather: {same}; files {sorted(p.name for p in (out / 'dcp').iterdir())}")
    D.close_world(world)


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MiB))  # read by glibc at start-up: set it for the command
    main(tyro.cli(Config))

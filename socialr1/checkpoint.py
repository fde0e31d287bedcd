"""Checkpoints as plain Hugging Face model directories (safetensors, config, tokenizer) that
`AutoModelForCausalLM.from_pretrained` loads. Written under a temporary name and renamed, so a
crash never leaves a half-written directory under the final name."""

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import PreTrainedTokenizerBase

from socialr1.policy import Policy


def save_hf(
    policy: Policy, tokenizer: PreTrainedTokenizerBase, directory: Path, dtype: torch.dtype
) -> None:
    """Collective: every rank calls it; rank 0 gathers the full weights on CPU and writes."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(policy, options=options)
    if dist.get_rank() == 0:
        state = {k.removeprefix("lm."): v.to(dtype) for k, v in state.items()}
        tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        policy.lm.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        _swap_in(tmp, directory)
    dist.barrier()


def _swap_in(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    # A directory cannot be renamed onto a non-empty one: move the old one aside first.
    old = directory.with_name(f"{directory.name}.old{os.getpid()}")
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old)

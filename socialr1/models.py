"""Model and tokenizer: loaded with `from_pretrained` (hub name or local path), or the offline
tiny Qwen3 built here from the training data."""

import importlib.util
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import tiny
from socialr1.config import ModelConfig
from socialr1.hub import hub_unavailable


class ModelLoadError(RuntimeError):
    pass


def attn_implementation(cfg: ModelConfig, device: torch.device) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_pretrained(
    cfg: ModelConfig, device: torch.device, auto_class: type = AutoModelForCausalLM, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Master weights in float32 (FSDP casts to the compute dtype for forward/backward). `kwargs`
    go to `auto_class.from_pretrained` (e.g. num_labels for a reward model)."""
    reason = None if Path(cfg.name_or_path).exists() else hub_unavailable()
    if reason:
        raise ModelLoadError(_advice(cfg.name_or_path, reason))
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
        lm = auto_class.from_pretrained(
            cfg.name_or_path, dtype=torch.float32, attn_implementation=attn_implementation(cfg, device), **kwargs
        )
    except OSError as e:
        raise ModelLoadError(_advice(cfg.name_or_path, str(e))) from e
    tokenizer.padding_side = "left"
    return lm, tokenizer


def _advice(name: str, reason: str) -> str:
    local = name.rstrip("/").split("/")[-1]
    return (
        f"could not load model {name!r}: {reason}.\n"
        "Without the Hugging Face hub, download it on a machine that has access "
        f"(hf download {name} --local-dir {local}), copy the folder here and pass its path: "
        f"--model.name-or-path ./{local}"
    )


def build_tiny(
    cfg: ModelConfig, corpus: Sequence[str], seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = tiny.build_tokenizer(corpus, cfg.tiny_vocab_size)
    lm = tiny.build_model(
        tokenizer, cfg.tiny_hidden_size, cfg.tiny_layers, cfg.tiny_heads, seed=seed
    )
    return lm, tokenizer


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn and end-of-text (Qwen3's generation stops at either)."""
    vocab = tokenizer.get_vocab()
    named = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    return sorted(named | {tokenizer.eos_token_id})

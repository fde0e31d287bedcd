"""Model and tokenizer: loaded with `from_pretrained` (hub name or local path), or the offline
tiny Qwen3 built here from the training data."""

import importlib.util
from typing import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import tiny
from socialr1.config import ModelConfig


class ModelLoadError(RuntimeError):
    pass


def attn_implementation(cfg: ModelConfig, device: torch.device) -> str:
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_pretrained(
    cfg: ModelConfig, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Master weights in float32 (FSDP casts to the compute dtype for forward/backward)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
        lm = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path, dtype=torch.float32, attn_implementation=attn_implementation(cfg, device)
        )
    except OSError as e:
        raise ModelLoadError(
            f"could not load model {cfg.name_or_path!r}: {e}\n"
            "Without access to the Hugging Face hub, download the model on a machine that has it "
            "(`huggingface-cli download Qwen/Qwen3-4B --local-dir Qwen3-4B`), copy the folder here "
            "and pass it: --model.name-or-path ./Qwen3-4B"
        ) from e
    tokenizer.padding_side = "left"
    return lm, tokenizer


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

"""Model and tokenizer: loaded with `from_pretrained` (hub name or local path), or the offline
tiny Qwen3 built here from the training data."""

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import tiny
from socialr1.config import ModelConfig
from socialr1.hub import hub_unavailable


class ModelLoadError(RuntimeError):
    pass


def flash_attn_error() -> str | None:
    """Why flash-attn cannot run here, or None. A real import, not `find_spec`: a wheel built
    against another torch is found, then fails to load its CUDA extension."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: F401
    except Exception as e:  # ImportError, or OSError / RuntimeError from the extension
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def attn_implementation(choice: str, device: torch.device) -> str:
    """Resolve --model.attn-implementation (training and log-probs; the rollout engine picks its
    own). auto: flash-attn when it imports on CUDA, else SDPA."""
    if choice == "flash_attention_2" and (reason := flash_attn_error()):
        raise ModelLoadError(f"--model.attn-implementation flash_attention_2: flash_attn does not import ({reason})")
    if choice != "auto":
        return choice
    if device.type == "cuda" and flash_attn_error() is None:
        return "flash_attention_2"
    return "sdpa"


@contextmanager
def attention(lm: PreTrainedModel, implementation: str) -> Iterator[None]:
    """Run the block with another attention kernel (e.g. SDPA to decode, flash-attn to train)."""
    before = lm.config._attn_implementation
    lm.set_attn_implementation(implementation)
    try:
        yield
    finally:
        lm.set_attn_implementation(before)


def load_pretrained(
    cfg: ModelConfig, device: torch.device, seed: int = 0, auto_class: type = AutoModelForCausalLM,
    flag: str = "--model.name-or-path", **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Master weights in float32 (FSDP casts to the compute dtype for forward/backward). With
    --model.random-init only the config and tokenizer are read, and the weights are random
    (seeded, so every rank builds the same model), initialised on `device`. `kwargs` go to the
    config (e.g. num_labels for a reward model built with AutoModelForSequenceClassification).
    `flag`: the command line's name for the model, cited in errors (eval.py's is --model)."""
    reason = None if Path(cfg.name_or_path).exists() else hub_unavailable()
    if reason:
        raise ModelLoadError(_advice(cfg.name_or_path, reason, flag))
    attn = attn_implementation(cfg.attn_implementation, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path)
        if not tokenizer.chat_template:
            raise ModelLoadError(
                f"{flag} {cfg.name_or_path}: the tokenizer has no chat template; prompts are chats "
                "(use the instruct / chat variant of the model, or add a chat_template to its tokenizer_config.json)"
            )
        if cfg.random_init:
            config = AutoConfig.from_pretrained(cfg.name_or_path, **kwargs)
            torch.manual_seed(seed)
            with torch.device(device):
                lm = auto_class.from_config(config, dtype=torch.float32, attn_implementation=attn)
        else:
            lm = auto_class.from_pretrained(cfg.name_or_path, dtype=torch.float32, attn_implementation=attn, **kwargs)
    except OSError as e:
        raise ModelLoadError(_advice(cfg.name_or_path, str(e), flag)) from e
    tokenizer.padding_side = "left"
    return lm, tokenizer


def _advice(name: str, reason: str, flag: str) -> str:
    local = name.rstrip("/").split("/")[-1]
    return (
        f"could not load model {name!r}: {' '.join(reason.split()).rstrip('.')}. "
        "Without the Hugging Face hub, download it on a machine that has access "
        f"(hf download {name} --local-dir {local}), copy the folder here and pass its path: "
        f"{flag} ./{local}"
    )


def build_tiny(
    cfg: ModelConfig, corpus: Sequence[str], seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = tiny.build_tokenizer(corpus, cfg.tiny_vocab_size)
    lm = tiny.build_model(
        tokenizer, cfg.tiny_hidden_size, cfg.tiny_layers, cfg.tiny_heads, seed=seed, embed_std=cfg.tiny_embed_std
    )
    return lm, tokenizer


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """--model.dtype resolved: auto is bfloat16 on CUDA (over float32 master weights), else float32."""
    return torch.bfloat16 if choice == "bfloat16" or (choice == "auto" and device.type == "cuda") else torch.float32


def checkpoint_activations(lm: PreTrainedModel) -> None:
    """Recompute each decoder layer in the backward (non-reentrant). transformers 5.25 renamed the
    method and warns on the old name, once per rank."""
    enable = getattr(lm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def quiet_loading() -> None:
    """No progress bar per data file or weight file: on 8 ranks they fill the screen, and the
    trainers print one summary of what they loaded instead."""
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-turn and end-of-text (Qwen3's generation stops at either)."""
    vocab = tokenizer.get_vocab()
    named = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    return sorted(named | {tokenizer.eos_token_id})

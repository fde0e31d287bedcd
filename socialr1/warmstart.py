"""Supervised warm start on gold SIP traces (generated items only), before GRPO.

A randomly initialised model never samples the SIP format, so every reward would be 0 and GRPO
would have nothing to compare; a short warm start makes some samples succeed. Runs on the plain,
unsharded model, identically on every rank (same seed, same batches)."""

import random
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1.config import ConfigError, WarmStartConfig
from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat
from socialr1.synthetic import response_stage

IGNORE = -100  # label HF's loss skips


def gold_completions(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MCQItem],
    fmt: SIPFormat,
    prefilled: str = "",
    random_answers: int | None = None,
) -> list[list[int]]:
    """Token ids of each item's gold trace and answer, less what the generation prompt pre-fills.
    With `random_answers` (a seed), each trace chooses a random option instead (Response Generation
    and answer tag), so the traces teach the format and the reasoning but not which option is right."""
    missing = [it.source for it in items if it.gold_stages is None]
    if missing:
        raise ConfigError(
            f"warm start needs gold SIP traces, which only generated items have "
            f"(--data.synthetic N); {len(missing)} items lack them, first: {missing[0]}"
        )
    rng = random.Random(random_answers)
    texts = []
    for it in items:
        stages, choice = it.gold_stages, it.answer
        if random_answers is not None:
            choice = rng.randrange(len(it.options))
            stages = (*stages[:-1], response_stage(it.options[choice], LETTERS[choice]))
        texts.append(fmt.render(stages, LETTERS[choice]).removeprefix(prefilled) + tokenizer.eos_token)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _batch(
    prompts: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, mask, labels [B, L]; labels cover the completion only."""
    width = max(len(p) + len(t) for p, t in zip(prompts, targets))
    ids = torch.full((len(prompts), width), pad_id)
    labels = torch.full((len(prompts), width), IGNORE)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (p, t) in enumerate(zip(prompts, targets)):
        ids[row, : len(p) + len(t)] = torch.tensor(p + t)
        labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[row, : len(p) + len(t)] = 1
    return ids, mask, labels


def warm_start(
    lm: PreTrainedModel,
    prompts: Sequence[list[int]],
    targets: Sequence[list[int]],
    pad_id: int,
    cfg: WarmStartConfig,
    seed: int,
    show_progress: bool,
) -> list[float]:
    """Teacher-forced cross-entropy on prompt -> gold completion; returns the loss of each step."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lr, weight_decay=0.0)
    # Constant, then linear decay over the last tenth: copying names and places from the story into
    # the trace appears only after a long plateau (near step 700 for the demo's model), which a
    # decay from the first step would push back.
    tail = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (cfg.steps - s) / tail))
    losses = []
    lm.train()
    bar = tqdm(range(cfg.steps), desc="warm start", disable=not show_progress, dynamic_ncols=True)
    for _ in bar:
        rows = rng.sample(range(len(prompts)), min(cfg.batch_size, len(prompts)))
        ids, mask, labels = _batch([prompts[r] for r in rows], [targets[r] for r in rows], pad_id)
        device = lm.device
        loss = lm(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses

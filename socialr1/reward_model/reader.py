"""A reward model that reads the story before it judges: the tiny model's causal LM is first
trained to write the training pairs' chosen reasoning from their story and question, in the reward
model's own input template, and only then becomes a sequence classifier.

A random tiny model trained on pairs alone learns form (a skipped stage, a pasted story) but ranks
a belief given to the wrong character, or the object's real place given as a belief, at chance:
those need the names and places of the reasoning checked against the story and the question."""

from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1.config import WarmStartConfig
from socialr1.reward_model.config import RMWarmStartConfig
from socialr1.reward_model.pairs import Pair
from socialr1.rewards.content import rm_input
from socialr1.warmstart import warm_start

_MARK = "\x00reasoning\x00"  # stands for the reasoning while the template is split around it


def reading_examples(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[Pair], template: str
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each pair's input up to its reasoning (the prompt), and of its chosen reasoning,
    the rest of the input and end of text (the target)."""
    heads, tails = zip(*(rm_input(p.story, p.question, _MARK, template).split(_MARK, 1) for p in pairs))
    prompts = tokenizer(list(heads), add_special_tokens=False)["input_ids"]
    texts = [p.chosen.strip() + tail + tokenizer.eos_token for p, tail in zip(pairs, tails)]
    return prompts, tokenizer(texts, add_special_tokens=False)["input_ids"]


def learn_to_read(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Pair],
    template: str,
    cfg: RMWarmStartConfig,
    seed: int,
    show_progress: bool,
) -> list[float]:
    """Teacher-forced cross-entropy on `reading_examples`; returns the loss of each step."""
    prompts, targets = reading_examples(tokenizer, pairs, template)
    steps = WarmStartConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size)
    return warm_start(lm, prompts, targets, tokenizer.pad_token_id, steps, seed, show_progress)

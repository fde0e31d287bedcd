"""What the SIP content reward model sees, and how a batch of texts is scored: one definition
shared by reward-model training, its held-out eval and the GRPO content reward, so the model
scores in GRPO exactly what it was trained on.

A text is the reasoning inside the think tags of a completion. Each input is
`socialr1.rewards.content.rm_input(story, question, reasoning)`, the template the GRPO content
reward (`--reward.content model`) scores with, over either the whole reasoning (unit "think", the
paper's choice) or one SIP stage segment at a time (unit "stage"); the text's score is the mean
over its inputs. Options are not part of the input. The unit and the token limit are stored in the checkpoint's config, so a scorer that
loads the checkpoint uses the settings it was trained with."""

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1.rewards.content import rm_input, rm_template
from socialr1.sip import SIPFormat

Unit = Literal["think", "stage"]
CONFIG_KEY = "socialr1_reward_input"  # in the checkpoint's config.json: {"unit": ..., "max_length": ...}


@dataclass(frozen=True)
class InputConfig:
    """How a reasoning text becomes reward-model input (saved in the checkpoint)."""

    unit: Unit = "think"
    """Score the whole think text in one input, or each SIP stage segment separately and average."""
    max_length: int = 4096
    """Token limit of one input; longer inputs are cut at the end."""
    template: str | None = None
    """FILE holding the input template (str.format fields {story}, {question}, {reasoning}); none:
    the built-in one. GRPO must score with the same file: --reward.rm.template FILE."""

    def __post_init__(self) -> None:
        if self.template is not None:
            rm_template(self.template, "--input.template")  # a bad file stops at start-up, in one line

    @classmethod
    def of(cls, model: PreTrainedModel) -> "InputConfig":
        """The settings a reward-model checkpoint was trained with."""
        return cls(**getattr(model.config, CONFIG_KEY, {}))


def stage_segments(think: str, fmt: SIPFormat) -> list[str]:
    """The think text cut at each stage header (its first occurrence), in text order; the text
    itself when it has no header."""
    starts = sorted(p for p in (think.find(fmt.stage_header(i)) for i in range(len(fmt.stages))) if p >= 0)
    if not starts:
        return [think]
    return [think[a:b].strip() for a, b in zip(starts, starts[1:] + [len(think)])]


def reward_inputs(
    story: str, question: str, think: str, unit: Unit, fmt: SIPFormat, template: str | None = None
) -> list[str]:
    """The reward model's input texts for one reasoning text: one, or one per stage segment.
    template: InputConfig.template (a file, or none for the built-in one)."""
    parts = [think.strip()] if unit == "think" else stage_segments(think.strip(), fmt)
    text = rm_template(template, "--input.template")
    return [rm_input(story, question, part, text) for part in parts]


def encode(
    tokenizer: PreTrainedTokenizerBase,
    stories: Sequence[str],
    questions: Sequence[str],
    thinks: Sequence[str],
    cfg: InputConfig,
    fmt: SIPFormat,
) -> list[list[list[int]]]:
    """Token ids of every text's inputs: [text][input][token]."""
    inputs = [reward_inputs(s, q, t, cfg.unit, fmt, cfg.template) for s, q, t in zip(stories, questions, thinks)]
    flat = tokenizer([s for group in inputs for s in group], truncation=True, max_length=cfg.max_length)["input_ids"]
    out, at = [], 0
    for group in inputs:
        out.append(flat[at : at + len(group)])
        at += len(group)
    return out


def pad_right(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, attention mask [R, L]. Right padding keeps positions 0.. for every row, so a row
    scores the same alone or in any batch; the score is read at its last real token."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids, mask


def budget_groups(rows: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive entries (each `rows[i]` rows of up to `lengths[i]` tokens) grouped so that a
    group's rows x longest stays within `budget` tokens; an entry over budget goes alone."""
    groups: list[list[int]] = []
    count = longest = 0
    for i, (r, n) in enumerate(zip(rows, lengths)):
        if groups and (count + r) * max(longest, n) <= budget:
            groups[-1].append(i)
            count, longest = count + r, max(longest, n)
        else:
            groups.append([i])
            count, longest = r, n
    return groups


class RewardHead(nn.Module):
    """A Hugging Face sequence-classification model with one label, as a module returning float32
    scores read at each row's last real token, as the model's own forward reads them (right
    padding). Under FSDP2 it is the root shard group (its forward all-gathers the head)."""

    def __init__(self, lm: PreTrainedModel):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, every_token: bool = False) -> torch.Tensor:
        """[R] scores, or [R, L] the head's score at every token (training with --loss.dense)."""
        hidden = getattr(self.lm, self.lm.base_model_prefix)(input_ids=ids, attention_mask=mask).last_hidden_state
        scores = self.lm.score(hidden)[..., 0].float()  # [R, L], a view of the head's output
        if every_token:
            return scores.clone()  # FSDP2's backward hook must see a tensor of its own, not a view
        return scores[torch.arange(len(ids), device=ids.device), mask.sum(1) - 1]


@torch.no_grad()
def score(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    encoded: Sequence[Sequence[list[int]]],
    pad_id: int,
    token_budget: int,
    device: torch.device,
) -> torch.Tensor:
    """[N] score of each text (mean over its inputs) from `encode`'s output; inputs sorted by
    length and batched by token budget."""
    rows = [ids for group in encoded for ids in group]
    owner = torch.tensor([t for t, group in enumerate(encoded) for _ in group], dtype=torch.long)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    flat = torch.zeros(len(rows), dtype=torch.float32)
    for group in budget_groups([1] * len(rows), [len(rows[i]) for i in order], token_budget):
        index = [order[g] for g in group]
        ids, mask = pad_right([rows[i] for i in index], pad_id)
        flat[index] = model(ids.to(device), mask.to(device)).cpu()
    per_text = torch.zeros(len(encoded)).index_add_(0, owner, flat)
    return per_text / torch.tensor([max(len(g), 1) for g in encoded])


def score_texts(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    cfg: InputConfig,
    fmt: SIPFormat,
    stories: Sequence[str],
    questions: Sequence[str],
    thinks: Sequence[str],
    token_budget: int,
    device: torch.device,
) -> torch.Tensor:
    """[N] reward-model score of each reasoning text `thinks[i]` given `stories[i]` and `questions[i]`."""
    encoded = encode(tokenizer, stories, questions, thinks, cfg, fmt)
    return score(model, encoded, tokenizer.pad_token_id, token_budget, device)

"""Rewards of a rollout batch. `SIPReward.score` runs on token ids on the rollouts' device:

- lexical.py: the byte view of completions and the offline lexical SIP scorers (the default);
- social_r1.py: Social-R1's published formula (--reward.formula social-r1);
- judge.py: an LLM judge of structure (--reward.structure judge);
- content.py: a reward model of content, in-process or over HTTP (--reward.content model|endpoint).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from socialr1.items import LETTERS, MCQItem
from socialr1.rewards import social_r1
from socialr1.rewards.config import JudgeConfig, RewardConfig, RewardModelConfig, SocialR1Config
from socialr1.rewards.content import RewardModel, ScoringAPI, rm_input, rm_template
from socialr1.rewards.judge import Judge
from socialr1.rewards.lexical import ItemFeatures, LexicalScorer, Parts, sip_tau, sip_total
from socialr1.sip import SIPFormat

__all__ = ["ItemFeatures", "JudgeConfig", "RewardConfig", "RewardModelConfig", "SIPReward", "SocialR1Config", "rm_input"]
Tensor = torch.Tensor
KEYS = ("total", "format", "accuracy", "structure", "content", "length")
SOCIAL_R1_KEYS = ("tau", "adj", "lp", "rp", "w_s", "w_c")
FAILURE_KEYS = ("judge_failed", "content_failed", "failed")


@dataclass
class Reasoning:
    """The rows of a batch that have a think text, with their items and texts (for the scorers
    that read text)."""

    rows: list[int]
    items: list[MCQItem]
    thinks: list[str]


class SIPReward:
    """Scores completions of SIP prompts with the configured formula and scorers; see
    RewardConfig. With a judge or reward model, `score` also returns per sample `judge_failed`,
    `content_failed` and `failed` (1.0 where a scorer failed after its retries; its term is 0)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: RewardConfig = RewardConfig(),
        total_steps: int = 1,
        fmt: SIPFormat = SIPFormat(),
        prefix: str = "",
        device: torch.device | str = "cpu",
    ):
        """prefix: text the generation prompt pre-fills (prompts.prefilled); every completion is
        scored as continuing it. device: where a reward model runs (the training device)."""
        self.tokenizer, self.config, self.total_steps, self.fmt = tokenizer, config, total_steps, fmt
        self.lexical = LexicalScorer(tokenizer, config, fmt, prefix)
        self.judge = Judge(config.judge, fmt) if config.structure_scorer == "judge" else None
        self.reward_model = RewardModel(config.rm, torch.device(device)) if config.content_scorer == "model" else None
        self.scoring_api = ScoringAPI(config.rm) if config.content_scorer == "endpoint" else None
        self.rm_template = rm_template(config.rm.template)
        self.judge_replies: list[str] = []  # the judge's raw reply per row of the last batch ("" if none)

    def describe(self) -> str:
        return self.config.describe()

    @property
    def keys(self) -> tuple[str, ...]:
        """The names of what `score` returns."""
        extra = SOCIAL_R1_KEYS if self.config.formula_used == "social-r1" else ()
        return KEYS + extra + (FAILURE_KEYS if self.config.external else ())

    def encode_items(self, items: Sequence[MCQItem]) -> ItemFeatures:
        return self.lexical.encode_items(items)

    def score_texts(
        self,
        completions: Sequence[str],
        answers: Sequence[str],
        stories: Sequence[str],
        step: int,
        questions: Sequence[str] | None = None,
        options: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Tensor]:
        """Text-level entry: builds items, tokenises and calls `score`. Without `options`, letters
        up to D (or the gold one) are valid and Response Generation has no option text to cover."""
        n = len(completions)
        questions = questions or [""] * n
        options = options or [[""] * max(4, LETTERS.index(a) + 1) for a in answers]
        items = [MCQItem(s, q, tuple(o), LETTERS.index(a)) for s, q, o, a in zip(stories, questions, options, answers)]
        rows = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        ids = torch.full((n, max([1, *map(len, rows)])), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return self.score(ids, mask, self.encode_items(items), torch.arange(n), step)

    def score(
        self, completion_ids: Tensor, completion_mask: Tensor, feats: ItemFeatures, item_index: Tensor, step: int
    ) -> dict[str, Tensor]:
        """completion_ids, completion_mask: [B, T]; item_index: [B] rows of feats -> dict of [B] float32.
        step: the trainer's 0-based step (Social-R1's curriculum sees it as verl's global step + 1)."""
        threads = self.config.cpu_threads if completion_ids.device.type == "cpu" else 0
        with torch.no_grad(), _torch_threads(threads):
            out = self._score(completion_ids, completion_mask.bool(), feats, item_index, step)
        return {k: v.float() for k, v in out.items()}

    def _score(self, ids: Tensor, mask: Tensor, feats: ItemFeatures, item_index: Tensor, step: int) -> dict[str, Tensor]:
        device = ids.device
        if len(item_index) == 0:
            return {k: torch.zeros(0, device=device) for k in self.keys}
        self.lexical.to_device(device)
        feats, items = feats.to(device), item_index.to(device)
        text = self.lexical.flatten(ids, mask)
        marks = self.lexical.markers(text)
        parts = self.lexical.parts(text, marks, mask, feats, items)
        think = social_r1.think_text(self.lexical, text, marks)
        reasoning = self._reasoning(text, think, feats, items) if self.config.external else None
        structure, judge_failed = self._structure(parts, reasoning, step)
        content, content_ok, content_failed = self._content(parts, text, reasoning, feats, items)
        if self.config.formula_used == "sip":
            out = {
                "format": parts.format, "accuracy": parts.accuracy, "structure": structure,
                "content": torch.where(content_ok, content, 0.0), "length": parts.length,
            }
            out = {"total": sip_total(out, sip_tau(step, self.total_steps, self.config), self.config), **out}
        else:
            letter = social_r1.chosen_letter(self.lexical, text, marks)
            lp, rp = social_r1.length_factors(self.lexical, text, think, self.config.social_r1)
            out = social_r1.combine(
                social_r1.format_score(self.lexical, text, marks).double(), (letter == feats.gold[items]).double(),
                structure, content, ~judge_failed, content_ok, lp, rp, step, self.config.social_r1,
            )
        if self.config.external:
            out.update(judge_failed=judge_failed.double(), content_failed=content_failed.double(),
                       failed=(judge_failed | content_failed).double())
        return out

    @staticmethod
    def _reasoning(text, think: social_r1.Think, feats: ItemFeatures, items: Tensor) -> Reasoning:
        thinks = _decode(text, think.start, think.end)
        rows = [i for i, t in enumerate(thinks) if t]  # rows without reasoning score 0 without a request
        return Reasoning(rows, [feats.items[i] for i in items[rows].tolist()], [thinks[i] for i in rows])

    def _structure(self, parts: Parts, reasoning: Reasoning | None, step: int) -> tuple[Tensor, Tensor]:
        """[B] structure score S in [0, 1] (0 where it failed) and [B] whether the judge failed."""
        B, device = len(parts.structure), parts.structure.device
        failed = torch.zeros(B, dtype=torch.bool)
        self.judge_replies = [""] * B
        if self.judge is None:
            return parts.structure, failed.to(device)
        scores = torch.zeros(B, dtype=torch.float64)
        for r, result in zip(reasoning.rows, self.judge.score(step, reasoning.items, reasoning.thinks)):
            if result is None:
                failed[r] = True
            else:
                scores[r], self.judge_replies[r] = result
        return scores.to(device), failed.to(device)

    def _content(
        self, parts: Parts, text, reasoning: Reasoning | None, feats: ItemFeatures, items: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """[B] content score on the formula's scale, [B] whether it counts, [B] whether it failed.
        A [0, 1] score (lexical, per-stage model) goes onto the raw reward-model scale under
        social-r1 by lexical_content_range; a raw score goes into [0, 1] under sip by a sigmoid."""
        B, device = len(parts.content), parts.content.device
        ok, failed = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
        if self.config.content_scorer == "lexical" or self.config.rm.per_stage:
            unit = parts.content if self.config.content_scorer == "lexical" else self._stage_scores(parts, text, feats, items)
            if self.config.formula_used == "social-r1":
                lo, hi = self.config.social_r1.lexical_content_range
                unit = lo + (hi - lo) * unit
            return unit, ~ok.to(device), failed.to(device)
        inputs = [rm_input(it.story, it.question, t, self.rm_template) for it, t in zip(reasoning.items, reasoning.thinks)]
        if self.reward_model is not None:
            raw, got = self.reward_model(inputs), torch.ones(len(inputs), dtype=torch.bool)
        else:
            raw, got = self.scoring_api(inputs)
        scores = torch.zeros(B, dtype=torch.float64)
        scores[reasoning.rows], ok[reasoning.rows], failed[reasoning.rows] = raw, got, ~got
        if self.config.formula_used == "sip":
            scores = torch.sigmoid(scores)
        return scores.to(device), ok.to(device), failed.to(device)

    def _stage_scores(self, parts: Parts, text, feats: ItemFeatures, index: Tensor) -> Tensor:
        """[B] mean over the four stages of P(good) from the reward model of each good stage's text
        (0 for the others)."""
        rows, stages = torch.nonzero(parts.good, as_tuple=True)
        seg = parts.segments[rows, stages]
        texts = _decode(text, seg[:, 0], seg[:, 1])
        inputs = [
            rm_input(feats.items[i].story, feats.items[i].question, f"{self.fmt.stage_header(k)} {t.strip()}", self.rm_template)
            for i, k, t in zip(index[rows].tolist(), stages.tolist(), texts)
        ]
        scores = torch.zeros(parts.good.shape, dtype=torch.float64)
        scores[rows.cpu(), stages.cpu()] = torch.sigmoid(self.reward_model(inputs))
        return scores.mean(1).to(parts.good.device)


def _decode(text, start: Tensor, end: Tensor) -> list[str]:
    """The text of byte ranges [start, end) of the stream."""
    data = (text.packed & 255).to("cpu", torch.uint8).numpy().tobytes()
    return [data[a:b].decode(errors="replace") for a, b in zip(start.tolist(), end.tolist())]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with n torch threads (n <= 0: unchanged)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

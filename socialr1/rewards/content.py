"""The content scorer: a sequence-classification reward model, in-process or behind a scoring API,
that reads the reasoning given the story and question and returns a raw (unbounded) score."""

from __future__ import annotations

import asyncio
import math
from typing import Sequence

import torch

from socialr1.rewards import remote
from socialr1.rewards.config import RewardModelConfig
from socialr1.rewards.templates import RM_INPUT, read_template

Tensor = torch.Tensor
RM_TEMPLATE = (
    "Judge the reasoning below: given the story and the question, does it read the social cues, infer what each "
    "character believes, feels and intends, and answer from those inferences, consistently and concisely?\n"
    "[Story]\n{story}\n[Question]\n{question}\n[Reasoning]\n{reasoning}"
)


def rm_template(path: str | None, flag: str = RM_INPUT[0]) -> str:
    """The reward model's input template: the file `path` (checked as templates.RM_INPUT says; its
    flag named `flag` in errors), or the built-in RM_TEMPLATE."""
    return RM_TEMPLATE if path is None else read_template(path, flag, *RM_INPUT[1:])


def rm_input(story: str, question: str, think_text: str, template: str = RM_TEMPLATE) -> str:
    """The reward model's input text, the one place it is defined: the in-process model, the
    scoring APIs, and reward-model training (pairs of these texts for one story and question)
    all use it, with the same template (`rm_template`). think_text: the stripped text of the
    think block (or of one SIP stage)."""
    return template.format(story=story, question=question, reasoning=think_text)


class RewardModel:
    """A Hugging Face sequence-classification model on the training device, without gradients.
    Its raw score: the logit of a one-label head, else the log-odds of the last label."""

    def __init__(self, config: RewardModelConfig, device: torch.device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(config.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(config.path, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.config, self.device = config, device

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        """[n] float64 raw scores; inputs are batched by padded tokens (token_budget), longest first."""
        if not texts:
            return torch.zeros(0, dtype=torch.float64)
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.config.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.zeros(len(ids), dtype=torch.float64)
        start = 0
        while start < len(order):
            width = len(ids[order[start]])  # the longest of the batch: sorted
            size = max(1, min(len(order) - start, self.config.token_budget // max(width, 1)))
            rows = order[start : start + size]
            batch = torch.full((size, width), self.model.config.pad_token_id, dtype=torch.long)
            mask = torch.zeros((size, width), dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, : len(ids[i])], mask[j, : len(ids[i])] = torch.tensor(ids[i]), 1
            logits = self.model(input_ids=batch.to(self.device), attention_mask=mask.to(self.device)).logits.double()
            out[rows] = _raw(logits).cpu()
            start += size
        return out


def _raw(logits: Tensor) -> Tensor:
    """[n] raw score of [n, labels] logits."""
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, -1] - logits[:, :-1].logsumexp(-1)


class ScoringAPI:
    """An HTTP reward-model service: LLaMA-Factory's score API (what the paper's code calls) or
    vLLM's classify or pooling API. Texts go in batches of batch_size per request."""

    def __init__(self, config: RewardModelConfig):
        self.config = config

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """[n] float64 raw scores and [n] bool whether each was obtained (after the retries)."""
        cfg = self.config
        chunks = [list(texts[i : i + cfg.batch_size]) for i in range(0, len(texts), cfg.batch_size)]
        results = asyncio.run(self._ask(chunks))
        scores, ok = torch.zeros(len(texts), dtype=torch.float64), torch.zeros(len(texts), dtype=torch.bool)
        for k, result in enumerate(results):
            if result is not None:
                span = slice(k * cfg.batch_size, k * cfg.batch_size + len(result))
                scores[span], ok[span] = torch.tensor(result, dtype=torch.float64), True
        return scores, ok

    async def _ask(self, chunks: list[list[str]]) -> list[list[float] | None]:
        cfg = self.config
        async with remote.client(None, cfg.api_key_env, cfg.timeout) as client:

            def call(chunk: list[str]):
                async def ask() -> list[float]:
                    reply = await client.post(cfg.url, cast_to=object, body=self._body(chunk))
                    return self._scores(reply, len(chunk))

                return ask

            return await remote.gather([call(c) for c in chunks], cfg.concurrency, cfg.retries, cfg.timeout)

    def _body(self, chunk: list[str]) -> dict:
        if self.config.api == "llamafactory":
            return {"model": self.config.model, "messages": chunk, "max_length": self.config.max_length}
        return {"model": self.config.model, "input": chunk}

    def _scores(self, reply: dict, n: int) -> list[float]:
        """Raw scores of a reply; ValueError (or KeyError, TypeError) when it is malformed."""
        if self.config.api == "llamafactory":
            values = [float(x) for x in reply["scores"]]
        else:
            data = sorted(reply["data"], key=lambda d: d["index"])
            if self.config.api == "vllm-classify":
                values = [_log_odds(float(d["probs"][-1])) for d in data]
            else:
                values = [float(_last(d["data"])) for d in data]
        if len(values) != n or not all(map(math.isfinite, values)):
            raise ValueError(f"expected {n} finite scores, got {values[:8]}")
        return values


def _log_odds(p: float) -> float:
    if not 0 < p < 1:
        raise ValueError(f"probability {p} outside (0, 1)")
    return math.log(p) - math.log1p(-p)


def _last(x):
    """A pooling output's score: the value itself, or the last of a (nested) list."""
    while isinstance(x, list):
        x = x[-1]
    return x

"""The LLM judge of reasoning structure: an OpenAI-compatible chat-completions endpoint grades the
think text on the four SIP stages with our rubric, replying <Score>x</Score>, x in [0, 1]."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Sequence

from socialr1.items import LETTERS, MCQItem
from socialr1.rewards import remote
from socialr1.rewards.config import JudgeConfig
from socialr1.sip import SIPFormat

SYSTEM = "You grade the step-by-step social reasoning of a model that answers questions about stories."
RUBRIC = """Grade the reasoning below by how well it follows social information processing: four stages, in this order.
{stages}

Lower the score for each of these faults:
- an answer option is named or favoured before the inference that supports it has been made;
- the reasoning works backwards from a chosen answer to justify it;
- a stage is skipped, empty, or out of order;
- loops: the same point restated, or the reasoning going round in circles.

1 is a trace that does all four stages well, in order, with none of these faults; 0 is no social
reasoning at all. Judge the reasoning only, not whether its final choice is right.

[Story]
{story}

[Question]
{question}

[Options]
{options}

[Reasoning]
{reasoning}

Reply with one or two sentences of justification, then the score as <Score>x</Score> with x a number from 0 to 1."""
SCORE_RE = re.compile(r"<Score>\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*</Score>")


def judge_prompt(item: MCQItem, reasoning: str, fmt: SIPFormat) -> str:
    stages = "\n".join(f"{k + 1}. {name}: {hint}" for k, (name, hint) in enumerate(zip(fmt.stages, fmt.stage_hints)))
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return RUBRIC.format(stages=stages, story=item.story, question=item.question, options=options, reasoning=reasoning)


def parse_score(reply: str) -> float:
    """The score of a reply holding exactly one <Score>x</Score> and no other Score tag, clamped
    to [0, 1]; ValueError otherwise."""
    found = SCORE_RE.findall(reply)
    if len(found) != 1 or reply.count("<Score>") != 1 or reply.count("</Score>") != 1:
        raise ValueError(f"no single <Score>x</Score> in the judge's reply: {reply[:200]!r}")
    return min(1.0, max(0.0, float(found[0])))


class Judge:
    """Scores (item, think text) pairs; identical pairs within one step are asked once."""

    def __init__(self, config: JudgeConfig, fmt: SIPFormat):
        self.config, self.fmt = config, fmt
        self._cache: dict[str, tuple[float, str]] = {}
        self._cache_step = -1

    def score(self, step: int, items: Sequence[MCQItem], thinks: Sequence[str]) -> list[tuple[float, str] | None]:
        """(score, raw reply) per pair, None where the judge failed after its retries."""
        if step != self._cache_step:
            self._cache, self._cache_step = {}, step
        prompts = [judge_prompt(it, t, self.fmt) for it, t in zip(items, thinks)]
        keys = [hashlib.sha256(p.encode()).hexdigest() for p in prompts]  # the prompt holds item and think text
        todo = {k: p for k, p in zip(keys, prompts) if k not in self._cache}
        for k, result in zip(todo, asyncio.run(self._ask(list(todo.values()))) if todo else []):
            if result is not None:
                self._cache[k] = result
        return [self._cache.get(k) for k in keys]

    async def _ask(self, prompts: list[str]) -> list[tuple[float, str] | None]:
        cfg = self.config
        async with remote.client(cfg.base_url, cfg.api_key_env, cfg.timeout) as client:

            def call(prompt: str):
                async def ask() -> tuple[float, str]:
                    reply = await client.chat.completions.create(
                        model=cfg.model,
                        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                        temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens,
                    )
                    text = reply.choices[0].message.content or ""
                    return parse_score(text), text

                return ask

            return await remote.gather([call(p) for p in prompts], cfg.concurrency, cfg.retries, cfg.timeout)

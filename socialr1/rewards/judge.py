"""The LLM judge of reasoning structure: an OpenAI-compatible chat-completions endpoint grades the
think text on the four SIP stages with our rubric (or the user's --reward.judge.prompt and
--reward.judge.system files), replying <Score>x</Score>, x in [0, 1]."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from typing import Sequence

from socialr1.items import LETTERS, MCQItem
from socialr1.rewards import remote
from socialr1.rewards.config import JudgeConfig
from socialr1.rewards.templates import JUDGE_PROMPT, JUDGE_SYSTEM, read_template
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


def judge_fields(item: MCQItem, reasoning: str, fmt: SIPFormat) -> dict[str, str]:
    """The values of the template fields (templates.JUDGE_FIELDS) for one item and think text."""
    stages = "\n".join(f"{k + 1}. {name}: {hint}" for k, (name, hint) in enumerate(zip(fmt.stages, fmt.stage_hints)))
    options = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options))
    return dict(stages=stages, story=item.story, question=item.question, options=options, reasoning=reasoning)


def parse_score(reply: str, rule: str = "strict") -> float:
    """The score of a judge's reply, clamped to [0, 1]; ValueError when there is none.
    strict: exactly one <Score>x</Score> and no other Score tag. last (the paper's code): the
    text after the last <Score> up to a </Score>, or without any <Score> the whole reply, read as
    a number (float's syntax; a non-finite one is refused)."""
    if rule == "last":
        text = reply.split("<Score>")[-1].split("</Score>")[0] if "<Score>" in reply else reply
        score = float(text)  # ValueError on anything but a number, surrounding whitespace allowed
        if not math.isfinite(score):
            raise ValueError(f"non-finite score in the judge's reply: {reply[:200]!r}")
        return min(1.0, max(0.0, score))
    found = SCORE_RE.findall(reply)
    if len(found) != 1 or reply.count("<Score>") != 1 or reply.count("</Score>") != 1:
        raise ValueError(f"no single <Score>x</Score> in the judge's reply: {reply[:200]!r}")
    return min(1.0, max(0.0, float(found[0])))


class Judge:
    """Scores (item, think text) pairs; identical pairs within one step are asked once."""

    def __init__(self, config: JudgeConfig, fmt: SIPFormat):
        self.config, self.fmt = config, fmt
        self.prompt = RUBRIC if config.prompt is None else read_template(config.prompt, *JUDGE_PROMPT)
        self.system = SYSTEM if config.system is None else read_template(config.system, *JUDGE_SYSTEM)
        self.extra_body = None if config.thinking == "unset" else {"chat_template_kwargs": {"enable_thinking": config.thinking == "on"}}
        self._cache: dict[str, tuple[float, str]] = {}
        self._cache_step = -1

    def score(self, step: int, items: Sequence[MCQItem], thinks: Sequence[str]) -> list[tuple[float, str] | None]:
        """(score, raw reply) per pair, None where the judge failed after its retries."""
        if step != self._cache_step:
            self._cache, self._cache_step = {}, step
        fields = [judge_fields(it, t, self.fmt) for it, t in zip(items, thinks)]
        messages = [(self.system.format(**f), self.prompt.format(**f)) for f in fields]
        keys = [hashlib.sha256("\0".join(m).encode()).hexdigest() for m in messages]  # they hold item and think text
        todo = {k: m for k, m in zip(keys, messages) if k not in self._cache}
        for k, result in zip(todo, asyncio.run(self._ask(list(todo.values()))) if todo else []):
            if result is not None:
                self._cache[k] = result
        return [self._cache.get(k) for k in keys]

    async def _ask(self, messages: list[tuple[str, str]]) -> list[tuple[float, str] | None]:
        cfg = self.config
        async with remote.client(cfg.base_url, cfg.api_key_env, cfg.timeout) as client:

            def call(system: str, prompt: str):
                async def ask() -> tuple[float, str]:
                    reply = await client.chat.completions.create(
                        model=cfg.model,
                        messages=[{"role": "system", "content": system}] * bool(system.strip()) + [{"role": "user", "content": prompt}],
                        temperature=cfg.temperature,
                        max_tokens=cfg.max_tokens,
                        extra_body=self.extra_body,
                    )
                    text = reply.choices[0].message.content or ""
                    return parse_score(text, cfg.parse), text

                return ask

            return await remote.gather([call(*m) for m in messages], cfg.concurrency, cfg.retries, cfg.timeout)

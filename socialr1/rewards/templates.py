"""Prompt templates a user supplies as files (the judge's prompt and system text, the reward
model's input): plain text with Python str.format fields, checked when the settings are parsed,
so that a bad file stops the run in one line before any model loads."""

from __future__ import annotations

import functools
import string
from pathlib import Path

from socialr1.errors import ConfigError

JUDGE_FIELDS = ("story", "question", "options", "reasoning", "stages")
RM_FIELDS = ("story", "question", "reasoning")
# (flag, allowed fields, required fields) of each template file, after `read_template`'s path
JUDGE_PROMPT = ("--reward.judge.prompt", JUDGE_FIELDS, ("reasoning",))
JUDGE_SYSTEM = ("--reward.judge.system", JUDGE_FIELDS, ())
RM_INPUT = ("--reward.rm.template", RM_FIELDS, ("reasoning",))  # reward-model training: --input.template


def fields_of(template: str) -> set[str]:
    """The names of the replacement fields of a str.format template; ValueError if malformed."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@functools.cache
def read_template(path: str, flag: str, fields: tuple[str, ...], required: tuple[str, ...] = ()) -> str:
    """The text of template file `path`, which may use only `fields` (each as {name}) and must use
    every one of `required`. Read once per path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag} {path}: cannot read it as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    allowed = ", ".join("{" + f + "}" for f in fields)
    try:
        used = fields_of(text)
    except ValueError as e:
        raise ConfigError(f"{flag} {path}: not a str.format template ({e}; write literal braces as {{{{ and }}}})") from None
    unknown = sorted(used - set(fields))
    if unknown:
        raise ConfigError(f"{flag} {path}: unknown field {{{unknown[0]}}}; the fields are {allowed} (literal braces: {{{{ }}}})")
    missing = [f for f in required if f not in used]
    if missing:
        raise ConfigError(f"{flag} {path}: it never uses {{{missing[0]}}}")
    return text

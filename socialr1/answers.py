"""Which option a completion chose, and whether it is in the asked-for format: two separate
questions. Accuracy counts the chosen option whatever the format; the format rate is reported on its
own, so a baseline that answers right in another format is not scored zero.

The answer is read from the text after the reasoning (after the last `</think>`; nothing when a
`<think>` is never closed, since a cut-off reasoning gave no answer), by the first rule that matches:

1. `tag`:      `<Answer>B</Answer>` (the last one)
2. `brackets`: `[[B]]` (the last one)
3. `line`:     a final `Answer: B` (also `answer is B`, `**Answer:** (B)`), the last one
4. `letter`:   the whole reply is one option letter (`B`, `(B)`, `B.`, `B)`), alone or followed by
               that option's text (`B. the kitchen`)
5. `text`:     the whole reply is exactly one option's text (case and a final period ignored)

A letter outside the item's options does not match. No rule matching is a parse failure, counted as
wrong."""

import re
from typing import Literal, Sequence

from socialr1.items import LETTERS
from socialr1.sip import SIPFormat

Mode = Literal["sip", "card", "cot", "direct"]
RULES = ("tag", "brackets", "line", "letter", "text")

_LETTER = r"\(?\s*([A-Za-z])\s*\)?"
_BRACKETS = re.compile(r"\[\[\s*" + _LETTER + r"\s*\]\]")
# the letter must be upper case and end its phrase: "the answer is a good one" names no option
_LINE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\**\s*:?\s*\**\s*\(?([A-Z])\)?(?=\s*(?:[).*,:]|$))", re.MULTILINE)
_LONE = re.compile(r"\(?([A-Za-z])(?:\)|[.:])?(?:\s+(.*))?", re.DOTALL)


def reply(text: str, fmt: SIPFormat = SIPFormat()) -> str:
    """The part of a completion after its reasoning ('' when the reasoning was never closed)."""
    if fmt.think_close in text:
        return text.rsplit(fmt.think_close, 1)[1].strip()
    return "" if fmt.think_open in text else text.strip()


def _letter(raw: str, n_options: int) -> int | None:
    index = LETTERS.find(raw.upper())
    return index if 0 <= index < n_options else None


def parse(text: str, options: Sequence[str], fmt: SIPFormat = SIPFormat()) -> tuple[int | None, str]:
    """completion -> (index of the chosen option or None, the rule that matched or 'none')."""
    body, n = reply(text, fmt), len(options)
    tag = re.compile(re.escape(fmt.answer_open) + r"\s*" + _LETTER + r"[^<]*" + re.escape(fmt.answer_close))
    for rule, pattern in (("tag", tag), ("brackets", _BRACKETS), ("line", _LINE)):
        found = [_letter(m.group(1), n) for m in pattern.finditer(body)]
        found = [i for i in found if i is not None]
        if found:
            return found[-1], rule
    lone = _LONE.fullmatch(body)
    if lone and _letter(lone.group(1), n) is not None:
        index, rest = _letter(lone.group(1), n), lone.group(2)
        if rest is None or _same(rest, options[index]):
            return index, "letter"
    hits = [i for i, o in enumerate(options) if _same(body, o)]
    if body and len(hits) == 1:
        return hits[0], "text"
    return None, "none"


def _same(said: str, option: str) -> bool:
    return said.strip().rstrip(".").strip().casefold() == option.strip().rstrip(".").strip().casefold()


def well_formed(text: str, mode: Mode, n_options: int, fmt: SIPFormat = SIPFormat()) -> bool:
    """Is the completion in the format its prompt mode asked for?
    sip: closed reasoning holding the four stage headers in order, then only `<Answer>X</Answer>`;
    card: closed reasoning, then only `<Answer>X</Answer>`; cot: a last line `Answer: X`;
    direct: only the letter."""
    letters = LETTERS[:n_options]
    body = reply(text, fmt)
    if mode in ("sip", "card"):
        answer = re.escape(fmt.answer_open) + f"[{letters}]" + re.escape(fmt.answer_close)
        if fmt.think_close not in text or not re.fullmatch(answer, body):
            return False
        if mode == "card":
            return True
        thought = text.rsplit(fmt.think_close, 1)[0]
        at = [thought.find(fmt.stage_header(i)) for i in range(len(fmt.stages))]
        return -1 not in at and at == sorted(at)
    if mode == "cot":
        last = body.splitlines()[-1].strip() if body else ""
        return re.fullmatch(rf"Answer:\s*[{letters}]", last) is not None
    return re.fullmatch(f"[{letters}]", body) is not None

"""The rewards, defined per sample in plain Python: the specification that the vectorized
`socialr1.rewards` must reproduce (tests compare the two on fuzzed corpora). Written on its own: it
shares constants (socialr1.rewards.constants: word lists, hash constants), the config and the
per-item record type with the vectorized code, never a function, so that a bug on one side cannot hide on both.

The text scored is the completion decoded with special tokens dropped (`<think>` kept), as
Python decodes bytes with errors="replace": each maximal invalid UTF-8 sequence, such as the bytes
of a character cut by truncation, is one U+FFFD. Conventions, chosen so that a byte-level tensor
implementation sees exactly the same thing:
- a *word* is a maximal run of ASCII letters/digits; anything else separates words;
- a word's identity is its case-folded polynomial hash `word_key` (31 bits), an n-gram's is
  `ngram_key`;
- a *content word* has at least two characters and is not a stopword;
- *whitespace* is Python's: `str.strip()`, `str.isspace()` and the `re` class `\\s` on the decoded
  text, which take in Unicode blanks such as U+00A0, U+3000 and U+001C-U+001F;
- markers are found at every position where they occur (overlaps included).
Social-R1's formula is written as the paper's code states it: Python regular expressions and
`str.strip()` on the decoded text, at verl's global step (the first update is step 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from socialr1.items import LETTERS, MCQItem
from socialr1.rewards.config import RewardConfig, SocialR1Config
from socialr1.rewards.constants import (
    CHAR_BASE, CHAR_CODE, HASH_MOD, MENTAL_WORDS, NGRAM_BASE, REASONING_WORDS, SENTENCE_END, STOPWORDS,
)
from socialr1.rewards.targets import ItemTargets  # the record only: its fields are computed here
from socialr1.sip import SIPFormat

WORD = re.compile("[" + re.escape("".join(CHAR_CODE)) + "]+")


def word_key(word: str) -> int:
    """sum(CHAR_CODE[c_j] * CHAR_BASE**j) mod HASH_MOD, by Horner's rule from the last character."""
    h = 0
    for ch in reversed(word):
        h = (h * CHAR_BASE + CHAR_CODE[ch]) % HASH_MOD
    return h


def ngram_key(keys: Sequence[int]) -> int:
    """sum(k_j * NGRAM_BASE**j) mod HASH_MOD, by Horner's rule from the last key."""
    h = 0
    for k in reversed(keys):
        h = (h * NGRAM_BASE + k) % HASH_MOD
    return h


STOP_KEYS = {word_key(w) for w in STOPWORDS}
MENTAL_KEYS = {word_key(w) for w in MENTAL_WORDS}
LEXICON_KEYS = MENTAL_KEYS | {word_key(w) for w in REASONING_WORDS}


@dataclass(frozen=True)
class Word:
    start: int  # position of the first character in the text
    key: int
    length: int

    @property
    def is_content(self) -> bool:
        return self.length >= 2 and self.key not in STOP_KEYS


def words(text: str) -> list[Word]:
    return [Word(m.start(), word_key(m.group()), len(m.group())) for m in WORD.finditer(text)]


def ngrams(ws: Sequence[Word], n: int) -> list[tuple[int, int, int]]:
    """(first word's start, last word's start, key) of every run of n consecutive words."""
    return [
        (ws[i].start, ws[i + n - 1].start, ngram_key([w.key for w in ws[i : i + n]])) for i in range(len(ws) - n + 1)
    ]


def content_set(text: str) -> frozenset[int]:
    return frozenset(w.key for w in words(text) if w.is_content)


def story_entities(story: str, max_entities: int) -> tuple[int, ...]:
    """Content words that occur at least twice, or once capitalised with something other than a
    sentence end before it (names); by count, then by first occurrence; at most max_entities."""
    seen: dict[int, list[int]] = {}  # key -> [count, first position, named]
    for w in words(story):
        if not w.is_content:
            continue
        entry = seen.setdefault(w.key, [0, w.start, 0])
        entry[0] += 1
        previous = re.search(r"(\S)\s*$", story[: w.start])
        if story[w.start].isupper() and previous and previous.group(1) not in SENTENCE_END:
            entry[2] = 1
    ranked = sorted((-c, first, k) for k, (c, first, named) in seen.items() if c >= 2 or named)
    return tuple(k for _, _, k in ranked[:max_entities])


def item_targets(item: MCQItem, config: RewardConfig) -> ItemTargets:
    return ItemTargets(
        gold=item.answer,
        n_options=len(item.options),
        grounded=content_set(item.story) | content_set(item.question)
        | frozenset().union(*map(content_set, item.options)) | LEXICON_KEYS,
        entities=story_entities(item.story, config.max_entities),
        question=content_set(item.question),
        options=tuple(map(content_set, item.options)),
        story_ngrams=frozenset(k for _, _, k in ngrams(words(item.story), config.copy_ngram)),
    )


# ---------------------------------------------------------------- per-sample reward definition


def find_all(text: str, marker: str) -> list[int]:
    """Start of every occurrence, overlapping ones included."""
    found, i = [], text.find(marker)
    while i >= 0:
        found.append(i)
        i = text.find(marker, i + 1)
    return found


def blank(text: str) -> bool:
    return not text.strip()


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def tolerance_factor(frac: float, tolerance: float) -> float:
    """1 while frac <= tolerance, then linear down to 0 at frac = 1."""
    return min(1.0, max(0.0, (1.0 - frac) / (1.0 - tolerance)))


def curriculum(step: int, total_steps: int, config: RewardConfig) -> float:
    """tau(step): 0 before curriculum_start (fraction of training), linear to 1 at curriculum_end."""
    frac = step / max(total_steps, 1)
    if config.curriculum_end <= config.curriculum_start:
        return float(frac >= config.curriculum_start)
    return min(1.0, max(0.0, (frac - config.curriculum_start) / (config.curriculum_end - config.curriculum_start)))


def length_window(n_tokens: int, config: RewardConfig) -> float:
    width = config.len_max - config.len_min
    k = config.len_sharpness
    return sigmoid(k * (n_tokens - config.len_min) / width) * (1.0 - sigmoid(k * (n_tokens - config.len_max) / width))


def choice(text: str, fmt: SIPFormat, n_options: int) -> int:
    """Index of the chosen option: the single non-blank character between the only answer-open and
    the only answer-close marker, if it is one of the item's option letters; else -1."""
    opens, closes = find_all(text, fmt.answer_open), find_all(text, fmt.answer_close)
    if len(opens) != 1 or len(closes) != 1 or opens[0] + len(fmt.answer_open) > closes[0]:
        return -1
    payload = text[opens[0] + len(fmt.answer_open) : closes[0]].strip()
    return LETTERS.index(payload) if len(payload) == 1 and payload in LETTERS[:n_options] else -1


def format_ok(text: str, fmt: SIPFormat, chosen: int) -> bool:
    """Blank, then the only think block, blank, the only answer (a valid letter), blank."""
    to, tc = find_all(text, fmt.think_open), find_all(text, fmt.think_close)
    ao, ac = find_all(text, fmt.answer_open), find_all(text, fmt.answer_close)
    if chosen < 0 or len(to) != 1 or len(tc) != 1:  # chosen >= 0 implies one answer pair
        return False
    think_end, answer_end = tc[0] + len(fmt.think_close), ac[0] + len(fmt.answer_close)
    return (
        blank(text[: to[0]])
        and to[0] + len(fmt.think_open) <= tc[0]
        and think_end <= ao[0]
        and blank(text[think_end : ao[0]])
        and blank(text[answer_end:])
    )


def stage_segments(text: str, fmt: SIPFormat) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Per stage: how often its header occurs (wholly) before the first think-close, where it
    first starts (-1 if absent), and the [start, end) of the text after that first header up to
    the next header start of any stage (or the think-close)."""
    tc = find_all(text, fmt.think_close)
    region_end = tc[0] if tc else len(text)
    headers = [fmt.stage_header(k) for k in range(len(fmt.stages))]
    occ = [[p for p in find_all(text, h) if p + len(h) <= region_end] for h in headers]
    starts = sorted(p for ps in occ for p in ps)
    segments = [
        (ps[0] + len(h), min([s for s in starts if s > ps[0]] + [region_end])) if ps else (0, 0)
        for ps, h in zip(occ, headers)
    ]
    return [len(ps) for ps in occ], [ps[0] if ps else -1 for ps in occ], segments


def in_segment(pos: int, seg: tuple[int, int]) -> bool:
    return seg[0] <= pos < seg[1]


def structure_score(
    counts: list[int], firsts: list[int], segments: list[tuple[int, int]], ws: list[Word], config: RewardConfig
) -> tuple[float, list[bool]]:
    """Half for stages present with >= min_stage_words content words, half for the fraction of
    stage pairs whose first headers appear in order; times a penalty per repeated header."""
    n = len(counts)
    n_content = [sum(w.is_content and in_segment(w.start, seg) for w in ws) for seg in segments]
    good = [c > 0 and m >= config.min_stage_words for c, m in zip(counts, n_content)]
    ordered = sum(counts[i] > 0 and counts[j] > 0 and firsts[i] < firsts[j] for i in range(n) for j in range(i + 1, n))
    extra = sum(max(c - 1, 0) for c in counts)
    raw = 0.5 * sum(good) / n + 0.5 * ordered / (n * (n - 1) / 2)
    return raw * max(0.0, 1.0 - config.stage_repeat_penalty * extra), good


def coverage(targets: Sequence[int] | frozenset[int], present: set[int]) -> float:
    return sum(t in present for t in targets) / len(targets) if targets else 1.0


def content_score(
    segments: list[tuple[int, int]],
    good: list[bool],
    ws: list[Word],
    item: ItemTargets,
    chosen: int,
    config: RewardConfig,
) -> float:
    """Mean over stages of: good * (g * grounding precision + (1 - g) * stage term) * copy factor.
    Precision: share of the stage's content words found in story/question/options or the
    mental-state/reasoning lexicon. Stage terms: Cue Encoding covers the story's entities; Cue
    Interpretation names mental states (mental_target of them for full credit); Goal
    Clarification covers the question's content words; Response Generation covers the chosen
    option's. Copy factor: tolerance_factor of the share of the stage's word n-grams that occur
    verbatim in the story."""
    grams = ngrams(ws, config.copy_ngram)
    scores = []
    for k, seg in enumerate(segments):
        inside = [w for w in ws if in_segment(w.start, seg)]
        content = [w for w in inside if w.is_content]
        present = {w.key for w in inside}
        precision = sum(w.key in item.grounded for w in content) / max(len(content), 1)
        if k == 0:
            term = coverage(item.entities, present)
        elif k == 1:
            term = min(1.0, sum(w.key in MENTAL_KEYS for w in inside) / config.mental_target)
        elif k == 2:
            term = coverage(item.question, present)
        else:
            term = coverage(item.options[chosen], present) if chosen >= 0 else 0.0
        seg_grams = [key for first, last, key in grams if in_segment(first, seg) and in_segment(last, seg)]
        copied = sum(key in item.story_ngrams for key in seg_grams) / len(seg_grams) if seg_grams else 0.0
        g = config.grounding_weight
        scores.append(good[k] * (g * precision + (1 - g) * term) * tolerance_factor(copied, config.copy_tolerance))
    return sum(scores) / len(scores)


def repetition_factor(ws: list[Word], config: RewardConfig) -> float:
    """tolerance_factor of the share of the completion's word n-grams that repeat an earlier one."""
    keys = [key for _, _, key in ngrams(ws, config.rep_ngram)]
    repeated = (len(keys) - len(set(keys))) / len(keys) if keys else 0.0
    return tolerance_factor(repeated, config.rep_tolerance)


def combine(parts: dict[str, float], tau: float, config: RewardConfig) -> float:
    shaped = tau * (config.w_structure * parts["structure"] + config.w_content * parts["content"])
    if config.mode == "additive":
        return (
            config.w_format * parts["format"]
            + config.w_accuracy * parts["accuracy"]
            + shaped
            + config.w_length * parts["length"]
        )
    return parts["format"] * (config.w_accuracy * parts["accuracy"] + shaped) * parts["length"]


def reference_scores(
    text: str,
    item: ItemTargets,
    n_tokens: int,
    step: int,
    total_steps: int,
    config: RewardConfig,
    fmt: SIPFormat = SIPFormat(),
) -> dict[str, float]:
    """All reward components of one decoded completion (special tokens dropped) of n_tokens tokens."""
    chosen = choice(text, fmt, item.n_options)
    ws = words(text)
    counts, firsts, segments = stage_segments(text, fmt)
    structure, good = structure_score(counts, firsts, segments, ws, config)
    parts = {
        "format": float(format_ok(text, fmt, chosen)),
        "accuracy": float(chosen == item.gold),
        "structure": structure,
        "content": content_score(segments, good, ws, item, chosen, config),
        "length": length_window(n_tokens, config) * repetition_factor(ws, config),
    }
    return {"total": combine(parts, curriculum(step, total_steps, config), config), **parts}


# ---------------------------------------------------------------- Social-R1's published reward


def think_text(text: str, fmt: SIPFormat = SIPFormat()) -> str:
    """T: the first think block's text, stripped (Python's str.strip())."""
    think = re.search(f"{re.escape(fmt.think_open)}(.*?){re.escape(fmt.think_close)}", text, re.DOTALL)
    return think.group(1).strip() if think else ""


def answer_letter(text: str, fmt: SIPFormat = SIPFormat()) -> str | None:
    """The letter of the first <Answer>\\s*([A-Z])[\\s\\S]*?</Answer> match (Python's \\s), if any."""
    ao, ac = re.escape(fmt.answer_open), re.escape(fmt.answer_close)
    answer = re.search(f"{ao}\\s*([A-Z])[\\s\\S]*?{ac}", text)
    return answer.group(1) if answer else None


def social_r1_scores(
    text: str,
    gold: int,
    global_step: int,
    structure: float | None,
    content: float | None,
    config: SocialR1Config,
    fmt: SIPFormat = SIPFormat(),
) -> dict[str, float]:
    """Every component of Social-R1's reward for one decoded completion at verl's `global_step`
    (1 at the first update). structure S in [0, 1] and content C (a raw reward-model score) are
    given; None means that scorer failed: its term is 0."""
    to, tc, ao, ac = (re.escape(m) for m in (fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close))
    F = 1.0 if re.search(f"^{to}(.*?){tc}(.*?){ao}(.*?){ac}$", text, re.DOTALL) else 0.0
    em = 1.0 if answer_letter(text, fmt) == LETTERS[gold] else 0.0
    T = think_text(text, fmt)
    L, n = len(T), config.rep_n
    lp = sigmoid((L - config.len_low) / config.len_softness) * sigmoid((config.len_high - L) / config.len_softness)
    grams = [T[i : i + n] for i in range(L - n + 1)]
    rho = (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
    rp = math.exp(-config.rep_slope * (rho - config.rep_threshold)) if rho > config.rep_threshold else 1.0
    p = min(1.0, global_step / config.curriculum_steps)
    w_s = config.w_structure_start * (1 - p) + config.w_structure_end * p
    w_c = config.w_content_start * (1 - p) + config.w_content_end * p
    tau = 1.0 if em else config.tau_wrong
    adj = max(0.0, content + config.content_shift) ** config.content_power if content is not None else 0.0
    S = structure if structure is not None else 0.0
    R = F**config.format_power * (em + tau * (w_s * S + w_c * adj)) * lp * rp
    R = 0.0 if F < config.format_gate else max(config.floor, R)
    return {
        "total": R, "format": F, "accuracy": em, "structure": S, "content": content if content is not None else 0.0,
        "length": lp * rp, "tau": tau, "adj": adj, "lp": lp, "rp": rp, "w_s": w_s, "w_c": w_c,
    }

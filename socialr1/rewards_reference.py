"""The SIP reward, defined per sample in plain Python: the specification that the vectorized
`socialr1.rewards` must reproduce (tests compare the two on fuzzed corpora).

Also home of the word-level vocabulary both sides share: what a word is, how it is hashed, the
stopword and mental-state lists, and the per-item targets (computed once per item, in Python).

The text scored is the completion decoded with special tokens dropped (`<think>` kept; bytes of a
character cut by truncation decode to U+FFFD). Conventions, chosen so that a byte-level tensor
implementation sees exactly the same thing:
- a *word* is a maximal run of ASCII letters/digits; anything else separates words;
- a word's identity is its case-folded polynomial hash `word_key` (31 bits), an n-gram's is
  `ngram_key`;
- a *content word* has at least two characters and is not a stopword;
- *whitespace* is ASCII whitespace only;
- markers are found at every position where they occur (overlaps included).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat

if TYPE_CHECKING:
    from socialr1.rewards import RewardConfig

HASH_MOD = 2**31 - 1  # keys live in [0, HASH_MOD); HASH_MOD itself is free to pad sorted key sets
CHAR_BASE = 131
CHAR_CODE = {c: i + 1 for i, c in enumerate("0123456789abcdefghijklmnopqrstuvwxyz")} | {
    c: i + 11 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
}  # small codes keep the vectorized prefix sums of code * CHAR_BASE**position far from overflow
NGRAM_BASE = 1_000_003
WHITESPACE = " \t\n\r\x0b\x0c"
WORD_RE = re.compile(r"[A-Za-z0-9]+")

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them themselves
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves s t d ll m re ve
    don didn doesn isn wasn weren won wouldn couldn shouldn""".split()
)
MENTAL_WORDS = frozenset(
    """believe believes believed believing belief beliefs think thinks thinking thought thoughts
    know knows knew known knowing knowledge unaware aware realize realizes realized notice notices
    noticed expect expects expected expectation assume assumes assumed suppose supposes remember
    remembers remembered forget forgets forgot mistaken false feel feels felt feeling feelings
    emotion emotions happy sad angry upset afraid scared worried surprised disappointed embarrassed
    proud jealous grateful hurt confused relieved nervous annoyed want wants wanted wish wishes
    wished hope hopes hoped desire desires intend intends intended intention intentions intent goal
    goals plan plans planned prefer prefers pretend pretends pretended lie lies lied joke joking
    sarcastic sarcasm polite mean means meant perspective""".split()
)
REASONING_WORDS = frozenset(
    """option options answer question story character characters therefore likely unlikely correct
    incorrect best fits consistent inconsistent contradicts supports evidence seems implies suggests
    infer inferred reason""".split()
)


def word_key(word: str) -> int:
    """Case-folded polynomial hash of an ASCII word: sum(CHAR_CODE[c_j] * CHAR_BASE**j) mod HASH_MOD."""
    h, p = 0, 1
    for ch in word:
        h = (h + CHAR_CODE[ch] * p) % HASH_MOD
        p = p * CHAR_BASE % HASH_MOD
    return h


def ngram_key(keys: Sequence[int]) -> int:
    """Hash of consecutive word keys: sum(k_j * NGRAM_BASE**j) mod HASH_MOD."""
    return sum(k * pow(NGRAM_BASE, j, HASH_MOD) for j, k in enumerate(keys)) % HASH_MOD


STOP_KEYS = frozenset(map(word_key, STOPWORDS))
MENTAL_KEYS = frozenset(map(word_key, MENTAL_WORDS))
GROUNDED_KEYS = MENTAL_KEYS | frozenset(map(word_key, REASONING_WORDS))


@dataclass(frozen=True)
class Word:
    start: int  # position of the first character in the text
    key: int
    length: int

    @property
    def is_content(self) -> bool:
        return self.length >= 2 and self.key not in STOP_KEYS


def words(text: str) -> list[Word]:
    return [Word(m.start(), word_key(m.group()), len(m.group())) for m in WORD_RE.finditer(text)]


def ngrams(ws: Sequence[Word], n: int) -> list[tuple[int, int, int]]:
    """(first word's start, last word's start, key) of every run of n consecutive words."""
    return [
        (ws[i].start, ws[i + n - 1].start, ngram_key([w.key for w in ws[i : i + n]])) for i in range(len(ws) - n + 1)
    ]


def content_keys(text: str) -> frozenset[int]:
    return frozenset(w.key for w in words(text) if w.is_content)


@dataclass(frozen=True)
class ItemTargets:
    """What the reward checks a completion against, derived once per item."""

    gold: int
    n_options: int
    grounded: frozenset[int]  # content words of story, question and options, and the lexicon
    entities: tuple[int, ...]  # the story's characters and objects, to be covered by Cue Encoding
    question: frozenset[int]  # to be covered by Goal Clarification
    options: tuple[frozenset[int], ...]  # the chosen one to be covered by Response Generation
    story_ngrams: frozenset[int]  # verbatim copies of these are penalised


def story_entities(story: str, max_entities: int) -> tuple[int, ...]:
    """Salient story words, the proxy for characters and objects: content words that recur or are
    capitalised mid-sentence (names); most frequent first, ties by first mention."""
    count: Counter[int] = Counter()
    first: dict[int, int] = {}
    named: set[int] = set()
    for m in WORD_RE.finditer(story):
        w = Word(m.start(), word_key(m.group()), len(m.group()))
        if not w.is_content:
            continue
        count[w.key] += 1
        first.setdefault(w.key, w.start)
        before = story[: m.start()].rstrip()
        if m.group()[0].isupper() and before and before[-1] not in ".!?\"'":
            named.add(w.key)
    salient = [k for k in count if count[k] >= 2 or k in named]
    return tuple(sorted(salient, key=lambda k: (-count[k], first[k]))[:max_entities])


def item_targets(item: MCQItem, config: RewardConfig) -> ItemTargets:
    story_words = words(item.story)
    return ItemTargets(
        gold=item.answer,
        n_options=len(item.options),
        grounded=content_keys("\n".join((item.story, item.question, *item.options))) | GROUNDED_KEYS,
        entities=story_entities(item.story, config.max_entities),
        question=content_keys(item.question),
        options=tuple(content_keys(o) for o in item.options),
        story_ngrams=frozenset(k for _, _, k in ngrams(story_words, config.copy_ngram)),
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
    return all(ch in WHITESPACE for ch in text)


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
    payload = text[opens[0] + len(fmt.answer_open) : closes[0]].strip(WHITESPACE)
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

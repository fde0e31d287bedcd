"""Per-item targets of the lexical scorers, computed once per item in Python: the word keys of the
story, question and options that completions are checked against."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from socialr1.items import MCQItem
from socialr1.rewards.constants import (
    CHAR_BASE, CHAR_CODE, HASH_MOD, MENTAL_WORDS, NGRAM_BASE, REASONING_WORDS, SENTENCE_END, STOPWORDS,
)

WORD_RE = re.compile(r"[A-Za-z0-9]+")  # a word: a maximal run of the characters CHAR_CODE knows


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


def _content(word: str) -> bool:
    return len(word) >= 2 and word_key(word) not in STOP_KEYS


def content_keys(text: str) -> frozenset[int]:
    return frozenset(word_key(w) for w in WORD_RE.findall(text) if _content(w))


@dataclass(frozen=True)
class ItemTargets:
    """What the lexical scorers check a completion against, derived once per item."""

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
        if not _content(m.group()):
            continue
        key = word_key(m.group())
        count[key] += 1
        first.setdefault(key, m.start())
        before = story[: m.start()].rstrip()
        if m.group()[0].isupper() and before and before[-1] not in SENTENCE_END:
            named.add(key)
    salient = [k for k in count if count[k] >= 2 or k in named]
    return tuple(sorted(salient, key=lambda k: (-count[k], first[k]))[:max_entities])


def item_targets(item: MCQItem, max_entities: int, copy_ngram: int) -> ItemTargets:
    story_keys = [word_key(w) for w in WORD_RE.findall(item.story)]
    return ItemTargets(
        gold=item.answer,
        n_options=len(item.options),
        grounded=content_keys("\n".join((item.story, item.question, *item.options))) | GROUNDED_KEYS,
        entities=story_entities(item.story, max_entities),
        question=content_keys(item.question),
        options=tuple(content_keys(o) for o in item.options),
        story_ngrams=frozenset(
            ngram_key(story_keys[i : i + copy_ngram]) for i in range(len(story_keys) - copy_ngram + 1)
        ),
    )

"""Constants of the reward definitions, shared by the vectorized scorers and by the independent
per-sample reference in tests/ (which shares nothing else with them): what a word is made of, how
words are hashed, the word lists; and, for the vectorized side, how UTF-8 is decoded."""

import sys

import torch

HASH_MOD = 2**31 - 1  # keys live in [0, HASH_MOD); HASH_MOD itself is free to pad sorted key sets
CHAR_BASE = 131
CHAR_CODE = {c: i + 1 for i, c in enumerate("0123456789abcdefghijklmnopqrstuvwxyz")} | {
    c: i + 11 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
}  # word characters (ASCII letters, digits), case-folded; small codes keep prefix sums of code * CHAR_BASE**pos small
NGRAM_BASE = 1_000_003
WHITESPACE = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
"""Every character Python's `str.strip()`, `str.split()` and the `re` class `\\s` take for whitespace
(ASCII blanks, U+001C-U+001F, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
U+205F, U+3000); the vectorized reward marks every byte of such a character blank."""
SENTENCE_END = ".!?\"'"  # a capitalised word right after one of these is not taken for a name

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


def utf8_table() -> "torch.Tensor":
    """[4, 256] per first byte of a UTF-8 sequence: its length in bytes (1 for a byte that starts
    none), the least and greatest allowed second byte (which excludes overlong forms, surrogates
    and code points past U+10FFFF), and whether it starts a sequence at all."""
    need, lo, hi, valid = torch.ones(256, dtype=torch.long), torch.full((256,), 0x80), torch.full((256,), 0xBF), torch.zeros(256, dtype=torch.long)
    need[0xC2:0xE0], need[0xE0:0xF0], need[0xF0:0xF5] = 2, 3, 4
    lo[0xE0], hi[0xED], lo[0xF0], hi[0xF4] = 0xA0, 0x9F, 0x90, 0x8F
    valid[:0x80], valid[0xC2:0xF5] = 1, 1
    return torch.stack([need, lo, hi, valid])

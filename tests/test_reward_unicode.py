"""Whitespace and decoding as Python sees them. The paper's reward applies Python's `re` and
`str.strip()` to the completion decoded with errors="replace", where `\\s` and stripping take in
every character with `str.isspace()` true and each invalid UTF-8 sequence is one U+FFFD. The
vectorized reward (both formulas) must agree with that on every such character at every place
where whitespace matters, and on invalid byte tokens; so must the think text the judge and the
reward model receive."""

import re
import sys

import pytest
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from socialr1.rewards import RewardConfig, SIPReward, _decode, social_r1
from socialr1.rewards.constants import WHITESPACE
from socialr1.sip import SIPFormat
from tests import rewards_reference as ref
from tests.test_rewards import ITEMS, assert_same, reference

FMT = SIPFormat()
SPACES = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
BAD = [  # invalid UTF-8: lone continuation bytes, bytes that start nothing, sequences cut short,
    # overlong forms, a surrogate, past U+10FFFF; and two that decode to one U+FFFD and a space
    b"\x80", b"\xbf\xbf", b"\xff", b"\xc0\x80", b"\xc1", b"\xf5", b"\xc2", b"\xe2\x82", b"\xe0\x80\x80", b"\xed\xa0\x80",
    b"\xf0\x9f\x98", b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xe3\x80" + "\u3000".encode(), b"\xc2" + "\xa0".encode(),
]
ITEM = ITEMS[0]
GOLD = ITEM.answer_letter
# a think text near the lower edge of the length window (lp moves ~0.5% per character) that
# repeats itself (rp < 1), so that a character more or less in T changes the total
BODY = (FMT.think_body(list(enumerate(ITEM.gold_stages))) + " I think so." * 12)[:300] + " Anna thinks so." * 8


def test_python_whitespace_is_one_set():
    """`\\s`, str.strip() and str.isspace() agree, and the reward's constant is that set."""
    matched = {c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(r"\s", c)}
    assert matched == set(SPACES) == set(WHITESPACE) and len(SPACES) == 29
    assert all(not (c + "x" + c).strip(c + "x") and (c + "x" + c).strip() == "x" for c in SPACES)


def byte_ids(tokenizer, data: bytes) -> list[int]:
    """One token per byte: any byte sequence, valid UTF-8 or not, split anywhere."""
    to_char = bytes_to_unicode()
    return tokenizer.convert_tokens_to_ids([to_char[b] for b in data])


def encode(tokenizer, pieces: list[str | bytes]) -> tuple[list[int], bytes]:
    """Token ids of a row made of text (tokenized) and raw bytes (a token per byte), and its bytes."""
    ids, data = [], b""
    for p in pieces:
        ids += tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else byte_ids(tokenizer, p)
        data += p.encode() if isinstance(p, str) else p
    return ids, data


def rows(x: str | bytes) -> dict[str, list[str | bytes]]:
    """Completions with x at each place where whitespace matters to either formula."""
    k = len(BODY) // 2
    return {
        "answer": ["<think>\n", BODY, "\n</think>\n<Answer>", x, GOLD, "</Answer>"],
        "answer both sides": ["<think>\n", BODY, "\n</think>\n<Answer>", x, GOLD, x, "</Answer>"],
        "think start": ["<think>", x, BODY, "\n</think>\n<Answer>", GOLD, "</Answer>"],
        "think end": ["<think>\n", BODY, x, "</think>\n<Answer>", GOLD, "</Answer>"],
        "think both ends": ["<think>", x, x, BODY, x, "</think>\n<Answer>", GOLD, "</Answer>"],
        "inside": ["<think>\n", BODY[:k], x, BODY[k:], "\n</think>\n<Answer>", GOLD, "</Answer>"],
        "before think": [x, "<think>\n", BODY, "\n</think>\n<Answer>", GOLD, "</Answer>"],
        "between": ["<think>\n", BODY, "\n</think>", x, "<Answer>", GOLD, "</Answer>"],
        "after answer": ["<think>\n", BODY, "\n</think>\n<Answer>", GOLD, "</Answer>", x],
    }


@pytest.fixture(scope="module")
def batch(tokenizer):
    """Every row of `rows` for every whitespace character (as text, and byte by byte) and every
    invalid sequence: ids, mask [B, T] and the decoded texts."""
    pieces = [r for c in SPACES for r in rows(c).values()] + [r for c in SPACES for r in rows(c.encode()).values()]
    pieces += [r for b in BAD for r in rows(b).values()]
    # different invalid sequences are the same character (U+FFFD): these 16-grams repeat
    pieces.append(["<think>\n", BODY, *(b"0123456789abcdef" + b for b in (b"\x80", b"\xff", b"\xc0", b"\xe2\x82") * 3),
                   "\n</think>\n<Answer>", GOLD, "</Answer>"])
    encoded = [encode(tokenizer, p) for p in pieces]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, (row, _) in enumerate(encoded):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    texts = [data.decode("utf-8", errors="replace") for _, data in encoded]
    decoded = [tokenizer.decode(r, skip_special_tokens=True, clean_up_tokenization_spaces=False) for r, _ in encoded]
    assert decoded == texts  # the tokenizer decodes bytes as Python does
    return ids, mask, texts


@pytest.mark.parametrize("step", [0, 150])
@pytest.mark.parametrize("formula", ["social-r1", "sip"])
def test_every_whitespace_and_bad_byte_as_python_sees_them(tokenizer, batch, formula, step):
    ids, mask, texts = batch
    config = RewardConfig(formula=formula)
    reward = SIPReward(tokenizer, config, total_steps=200)
    index = torch.zeros(len(ids), dtype=torch.long)
    got = reward.score(ids, mask, reward.encode_items([ITEM]), index, step)
    assert_same(got, reference(tokenizer, ids, mask, [ITEM], index, step, config))
    if formula == "social-r1":  # a correct letter after any whitespace counts, after a bad byte it does not
        n_space_rows = 2 * len(SPACES) * len(rows(" "))
        answer = [i for i, t in enumerate(texts) if ref.answer_letter(t) == GOLD]
        assert set(range(n_space_rows)) <= set(answer) and (got["accuracy"][answer] == 1).all()
        per = len(rows(" "))
        bad_answers = [n_space_rows + per * k + j for k in range(len(BAD)) for j in (0, 1)]  # "answer", "answer both sides"
        assert (got["accuracy"][bad_answers] == 0).all()


def test_judge_and_reward_model_see_python_stripped_think_text(tokenizer, batch):
    ids, mask, texts = batch
    reward = SIPReward(tokenizer, RewardConfig(formula="social-r1"))
    flat = reward.lexical.flatten(ids, mask.bool())
    think = social_r1.think_text(reward.lexical, flat, reward.lexical.markers(flat))
    want = [ref.think_text(t) for t in texts]
    assert _decode(flat, think.start, think.end) == want
    assert think.chars.tolist() == [len(t) for t in want]
    assert sum("\ufffd" in t for t in want) >= len(BAD) * 4  # bad bytes inside T count as characters

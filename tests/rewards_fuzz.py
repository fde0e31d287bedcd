"""Fuzzed completions for checking the vectorized rewards against the per-sample reference (tests)
and for timing both (benchmarks/reward_bench.py): good SIP traces, then random damage of the
kinds a policy produces or a reward hacker tries."""

import random
from typing import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat

UNICODE = ["é", "ü", "中文", "😀", "\u200b", "\xa0", "Ｂ", "e\u0301", "—", "«»", "\ufffd", "İ", "K", "\u3000", "\x1f", "\x85", "\u2028", "\ufeff"]


def good_trace(
    item: MCQItem, fmt: SIPFormat, rng: random.Random, filler: Sequence[str] = (), extra: int = 0
) -> list[str]:
    """Stage texts of a genuine trace: the item's gold stages, each padded with `extra` sentences drawn from filler."""
    return [s + "".join(" " + rng.choice(filler) for _ in range(extra)) for s in item.gold_stages]


def _stage(fmt: SIPFormat, k: int, text: str) -> str:
    return f"{fmt.stage_header(k)} {text}"


def mutated(item: MCQItem, fmt: SIPFormat, rng: random.Random, filler: Sequence[str] = (), extra: int = 0) -> str:
    """A genuine trace for item with 0-3 random mutations applied to its parts or its text."""
    stages = list(enumerate(good_trace(item, fmt, rng, filler, extra)))
    letter = item.answer_letter
    n_mut = rng.choice([0, 0, 1, 1, 2, 3])
    ops = [rng.randrange(18) for _ in range(n_mut)]
    for op in ops:
        if op == 0 and stages:  # drop a stage
            stages.pop(rng.randrange(len(stages)))
        elif op == 1 and len(stages) > 1:  # swap two stages
            i, j = rng.sample(range(len(stages)), 2)
            stages[i], stages[j] = stages[j], stages[i]
        elif op == 2 and stages:  # repeat a stage
            stages.insert(rng.randrange(len(stages) + 1), rng.choice(stages))
        elif op == 3 and stages:  # empty or near-empty stage
            i = rng.randrange(len(stages))
            stages[i] = (stages[i][0], rng.choice(["", "...", "the cat", "Anna is here."]))
        elif op == 4 and stages:  # copy the story into a stage
            i = rng.randrange(len(stages))
            stages[i] = (stages[i][0], item.story)
        elif op == 5:  # wrong, invalid, lower-case, several or no letters
            letter = rng.choice(
                [*LETTERS[: len(item.options) + 2], "a", "b", "A, B", "AB", " ", "", "Option B", letter * 2]
            )
    think = "\n".join(_stage(fmt, k, t) for k, t in stages)
    answer = f"{fmt.answer_open}{letter}{fmt.answer_close}"
    text = f"{fmt.think_open}\n{think}\n{fmt.think_close}\n{answer}"
    for op in ops:
        text = _text_mutation(op, text, fmt, item, rng)
    return text


def _insert(text: str, piece: str, rng: random.Random) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + piece + text[i:]


def _text_mutation(op: int, text: str, fmt: SIPFormat, item: MCQItem, rng: random.Random) -> str:
    markers = [
        fmt.think_open,
        fmt.think_close,
        fmt.answer_open,
        fmt.answer_close,
        *map(fmt.stage_header, range(len(fmt.stages))),
    ]
    if op == 6:  # remove a marker
        m = rng.choice(markers)
        return text.replace(m, "", 1)
    if op == 7:  # double a marker somewhere, or add another answer
        return _insert(text, rng.choice([*markers, f"{fmt.answer_open}{item.answer_letter}{fmt.answer_close}"]), rng)
    if op == 8:  # trailing or leading text
        junk = rng.choice([" The answer is B.", "\n\nDone", "  \n", " x", f"\n{fmt.answer_open}"])
        return text + junk if rng.random() < 0.7 else junk.strip() + text
    if op == 9:  # unicode noise
        for _ in range(rng.randint(1, 4)):
            text = _insert(text, rng.choice(UNICODE), rng)
        return text
    if op == 10:  # endless repetition
        phrase = rng.choice(["I think so. ", "Anna thinks the ball is in the box. ", "la "])
        return _insert(text, phrase * rng.randint(5, 80), rng)
    if op == 11:  # answer outside the tags
        return text.split(fmt.answer_open)[0] + f"The answer is {item.answer_letter}."
    if op == 12:  # cut at a random character
        return text[: rng.randrange(len(text) + 1)]
    if op == 13:  # whitespace variants
        return text.replace("\n", rng.choice(["\r\n", "\t", " ", "\n\n", ""]))
    if op == 14:  # trailing whitespace
        return text + rng.choice(["\n", "\n\n", " \n", "\r\n", "\t"])
    if op == 15:  # blanks (some outside ASCII) or a lower-case letter before the answer letter
        return text.replace(fmt.answer_open, fmt.answer_open + rng.choice([" ", "\n ", "\t", "x", " b ", "\xa0", "\u3000"]), 1)
    if op == 16:  # something before the think block
        return rng.choice([" ", "\n", "ok ", "\ufeff"]) + text
    if op == 17:  # a stretch of the text said again and again
        i = rng.randrange(len(text) + 1)
        return _insert(text, text[i : i + rng.randint(8, 80)] * rng.randint(2, 12), rng)
    return text


def tokenize_batch(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    rng: random.Random,
    max_tokens: int,
    truncate_p: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded completion ids [B, T] and mask [B, T] as the trainer builds them: each row ends
    with <|im_end|> unless it is cut at max_tokens or (with prob truncate_p) earlier."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > max_tokens or rng.random() < truncate_p:
            ids = ids[: min(max_tokens, rng.randint(1, len(ids)))]
        rows.append(ids)
    width = max(map(len, rows))
    batch = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, ids in enumerate(rows):
        batch[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return batch, mask


def corpus(
    items: Sequence[MCQItem],
    n: int,
    seed: int,
    fmt: SIPFormat = SIPFormat(),
    extra: Callable[[random.Random], int] = lambda rng: 0,
) -> tuple[list[str], list[int]]:
    """n fuzzed completions and the index of the item each answers."""
    rng = random.Random(seed)
    filler = [s for it in items for s in it.gold_stages]
    index = [rng.randrange(len(items)) for _ in range(n)]
    return [mutated(items[i], fmt, rng, filler, extra(rng)) for i in index], index

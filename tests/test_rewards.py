"""The vectorized SIP reward: equal to the per-sample reference on fuzzed corpora, hard to game,
robust to arbitrary token sequences, and usable from token ids or from text."""

import dataclasses
import math
import random

import pytest
import torch

from socialr1.errors import ConfigError
from socialr1.items import MCQItem
from socialr1.rewards import RewardConfig, SIPReward
from socialr1.rewards.lexical import _token_bytes
from socialr1.sip import SIPFormat
from socialr1.synthetic import generate_items
from socialr1.tiny import build_tokenizer
from tests import rewards_fuzz as fuzz
from tests import rewards_reference as ref

FMT = SIPFormat()
ITEMS = generate_items(120, seed=3) + [dataclasses.replace(it, story="") for it in generate_items(12, seed=4)]
KEYS = ("total", "format", "accuracy", "structure", "content", "length")
SOCIAL_KEYS = (*KEYS, "tau", "adj", "lp", "rp", "w_s", "w_c")
TOTAL_STEPS = 100


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [f"{it.story}\n{it.question}\n" + "\n".join(it.options) for it in ITEMS]
    return build_tokenizer(corpus + [FMT.render(it.gold_stages, it.answer_letter) for it in ITEMS], vocab_size=1024)


def reference(tokenizer, ids, mask, items, index, step, config, fmt=FMT) -> dict[str, torch.Tensor]:
    """The per-sample reference on the decoded rows of a token batch; under social-r1 its lexical
    structure and content stand in for S and C, as in SIPReward."""
    rows, targets = [], {}
    for row, m, i in zip(ids.tolist(), mask.tolist(), index.tolist()):
        n = sum(m)
        text = tokenizer.decode(row[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        target = targets.setdefault(i, ref.item_targets(items[i], config))
        scores = ref.reference_scores(text, target, n, step, TOTAL_STEPS, config, fmt)
        if config.formula_used == "social-r1":
            lo, hi = config.social_r1.lexical_content_range
            content = lo + (hi - lo) * scores["content"]
            # the trainer's step is 0-based, verl's global step counts the first update as 1
            scores = ref.social_r1_scores(text, items[i].answer, step + 1, scores["structure"], content, config.social_r1, fmt)
        rows.append(scores)
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]}


def assert_same(vec: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(vec) == set(want)
    for k in ("format", "accuracy"):
        assert torch.equal(vec[k].double(), want[k]), k
    for k in want:
        bad = ((vec[k].double() - want[k]).abs() > 1e-6 * want[k].abs().clamp(min=1)).nonzero().flatten().tolist()  # float32
        assert not bad, (
            f"{k}: rows {bad[:5]}: vectorized {vec[k][bad[:5]].tolist()} reference {want[k][bad[:5]].tolist()}"
        )


def fuzz_check(
    tokenizer, config, fmt, n, seed, max_tokens, steps, extra=(0, 0, 1, 3), batch=400
) -> dict[str, torch.Tensor]:
    """Vectorized = reference on n fuzzed completions, in batches scored at steps[k] in turn."""
    texts, index = fuzz.corpus(ITEMS, n, seed, fmt, extra=lambda rng: rng.choice(extra))
    reward = SIPReward(tokenizer, config, total_steps=TOTAL_STEPS, fmt=fmt)
    feats = reward.encode_items(ITEMS)
    rng = random.Random(seed)
    seen = []
    for k, s in enumerate(range(0, n, batch)):
        ids, mask = fuzz.tokenize_batch(tokenizer, texts[s : s + batch], rng, max_tokens)
        index_t = torch.tensor(index[s : s + batch])
        step = steps[k % len(steps)]
        vec = reward.score(ids, mask, feats, index_t, step)
        assert_same(vec, reference(tokenizer, ids, mask, ITEMS, index_t, step, config, fmt))
        seen.append(vec)
    return {k: torch.cat([v[k] for v in seen]) for k in seen[0]}


def test_fuzzed_corpus_matches_reference(tokenizer):
    scores = fuzz_check(tokenizer, RewardConfig(), FMT, n=4000, seed=0, max_tokens=320, steps=[50])
    # the corpus exercises every branch: both outcomes of format and accuracy, partial structure
    for k in ("format", "accuracy"):
        assert 0.2 < scores[k].mean() < 0.9, k
    assert ((scores["structure"] > 0) & (scores["structure"] < 1)).float().mean() > 0.1
    assert scores["content"].std() > 0.05 and scores["length"].std() > 0.05


def test_other_markers_and_settings_match_reference(tokenizer):
    fmt = SIPFormat(
        think_open="<reasoning>",
        think_close="</reasoning>",
        answer_open="«Ans»",
        answer_close="«/Ans»",
        stages=("Encode", "Interpret", "Clarify", "Respond"),
        stage_suffix=" -",
    )
    config = RewardConfig(
        mode="additive",
        rep_ngram=2,
        copy_ngram=3,
        min_stage_words=1,
        mental_target=1,
        max_entities=3,
        copy_tolerance=0.0,
    )
    scores = fuzz_check(tokenizer, config, fmt, n=800, seed=1, max_tokens=200, steps=[40])
    assert scores["format"].mean() > 0.2


OTHER_MARKERS = SIPFormat(think_open="<reasoning>", think_close="</reasoning>", answer_open="«Ans»", answer_close="«/Ans»")


@pytest.mark.parametrize("fmt, n", [(FMT, 810), (OTHER_MARKERS, 405)])
def test_social_r1_formula_matches_reference(tokenizer, fmt, n):
    """Social-R1's formula (lexical S and C) on long, repetitive, cut and damaged traces, at steps
    before, inside and after the curriculum."""
    config = RewardConfig(formula="social-r1")
    scores = fuzz_check(
        tokenizer, config, fmt, n, seed=5, max_tokens=1400, steps=[0, 120, 300], extra=(0, 1, 3, 8, 20), batch=n // 3
    )
    assert set(scores) == set(SOCIAL_KEYS)
    for k in ("format", "accuracy"):
        assert 0.2 < scores[k].mean() < 0.9, k
    lp, rp = scores["lp"], scores["rp"]
    assert (lp < 0.1).any() and (lp > 0.9).any() and ((lp > 0.1) & (lp < 0.9)).any()  # outside, inside, on the slope
    assert (rp < 0.9).float().mean() > 0.05 and (rp == 1).float().mean() > 0.3
    assert scores["w_s"].unique().tolist() == pytest.approx([1.0, 1.395, 1.995])  # steps 300, 120, 0: global 301, 121, 1


def test_question_only_items(tokenizer):
    """Items without a story (data.py allows them) score like any other, alone or in a batch."""
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=TOTAL_STEPS)
    bare = [dataclasses.replace(it, story="") for it in ITEMS[:4]]
    texts = [genuine(it) for it in bare]
    args = ([it.answer_letter for it in bare], [""] * 4, 100, [it.question for it in bare], [it.options for it in bare])
    s = reward.score_texts(texts, *args)
    assert s["format"].tolist() == [1] * 4 and s["accuracy"].tolist() == [1] * 4 and (s["content"] > 0).all()


@pytest.mark.parametrize("formula, n_keys", [("sip", 6), ("social-r1", 12)])
def test_empty_batch(tokenizer, formula, n_keys):
    reward = SIPReward(tokenizer, RewardConfig(formula=formula))
    s = reward.score(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), reward.encode_items(ITEMS[:2]), torch.zeros(0, dtype=torch.long), 0)
    assert len(s) == n_keys and all(v.shape == (0,) for v in s.values())


def test_additive_total_by_hand(tokenizer):
    """The additive total of components known exactly: 0.5 format + 1 accuracy + tau (0.5 structure
    + 0.5 content) + 0.25 length, with length from the token count's window (no word repeats)."""
    config = RewardConfig(mode="additive")
    reward = SIPReward(tokenizer, config, total_steps=TOTAL_STEPS)
    item = ITEMS[0]
    gold, wrong = item.answer_letter, next(x for x in item.letters if x != item.answer_letter)
    texts = {
        "no reasoning": f"<think>\n</think>\n<Answer>{gold}</Answer>",  # F 1, acc 1, S 0, C 0
        "headers only": FMT.render(["", "", "", ""], wrong),  # F 1, acc 0, S 0.5 (all in order, none good), C 0
        "no format": f"The answer is {gold}.",  # all 0 but length
    }
    parts = {"no reasoning": (1, 1, 0.0), "headers only": (1, 0, 0.5), "no format": (0, 0, 0.0)}
    for step, tau in ((10, 0.0), (50, 0.5), (100, 1.0)):
        s = reward.score_texts(list(texts.values()), [gold] * 3, [item.story] * 3, step, [item.question] * 3, [item.options] * 3)
        for row, (name, text) in enumerate(texts.items()):
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            window = 1 / (1 + math.exp(-10 * (n - 32) / 736)) * (1 - 1 / (1 + math.exp(-10 * (n - 768) / 736)))
            fmt_ok, acc, structure = parts[name]
            want = 0.5 * fmt_ok + 1.0 * acc + tau * 0.5 * structure + 0.25 * window
            assert s["total"][row].item() == pytest.approx(want, abs=1e-6), (name, step)
            assert (s["format"][row], s["accuracy"][row], s["structure"][row], s["content"][row]) == (fmt_ok, acc, structure, 0)


def genuine(item: MCQItem) -> str:
    return FMT.render(item.gold_stages, item.answer_letter)


def hacks(item: MCQItem) -> dict[str, str]:
    a, letters = item.answer_letter, item.letters
    body = genuine(item).split("</think>")[0]
    stage_texts = list(item.gold_stages)
    return {
        "all letters": FMT.render(stage_texts, ", ".join(letters)),
        "letters glued": FMT.render(stage_texts, letters),
        "answer outside tags": f"{body}</think>\nThe answer is {a}.",
        "bare letter": f"{body}</think>\n{a}",
        "headers only": FMT.render(["", "", "", ""], a),
        "headers with filler": FMT.render(["ok.", "ok.", "ok.", "ok."], a),
        "story in every stage": FMT.render([item.story] * 4, a),
        "endless repetition": FMT.render([*stage_texts[:3], stage_texts[3] + " I think so." * 60], a),
        "several answers": genuine(item) + "".join(f"<Answer>{x}</Answer>" for x in letters),
        "two answers": genuine(item) + f"\n<Answer>{a}</Answer>",
        "no reasoning": f"<think>\n</think>\n<Answer>{a}</Answer>",
    }


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_known_hacks_never_beat_a_genuine_trace(tokenizer, mode):
    reward = SIPReward(tokenizer, RewardConfig(mode=mode), total_steps=TOTAL_STEPS)
    items = ITEMS[:20]
    variants = [hacks(it) for it in items]
    names = list(variants[0])
    texts = [genuine(it) for it in items] + [v[name] for name in names for v in variants]  # blocks of len(items)
    block = len(items)
    answers, stories = [it.answer_letter for it in items], [it.story for it in items]
    questions, options = [it.question for it in items], [it.options for it in items]
    for step in (0, 50, 100):
        n = 1 + len(names)
        s = reward.score_texts(texts, answers * n, stories * n, step, questions * n, options * n)
        good = s["total"][:block]
        assert (s["format"][:block] == 1).all() and (s["accuracy"][:block] == 1).all()
        for j, name in enumerate(names, start=1):
            hacked = s["total"][block * j : block * (j + 1)]
            assert (hacked <= good + 1e-6).all(), f"{name} at step {step}: {hacked.tolist()} vs {good.tolist()}"
            if step == 100:
                assert hacked.mean() < good.mean(), name


def test_component_verdicts_on_hacks(tokenizer):
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=TOTAL_STEPS)
    item = ITEMS[5]
    h = hacks(item)
    names = ["genuine", *h]
    s = reward.score_texts(
        [genuine(item), *h.values()],
        [item.answer_letter] * len(names),
        [item.story] * len(names),
        100,
        [item.question] * len(names),
        [item.options] * len(names),
    )
    got = {n: {k: s[k][i].item() for k in KEYS} for i, n in enumerate(names)}
    assert got["genuine"]["structure"] == 1 and got["genuine"]["content"] > 0.4 and got["genuine"]["length"] > 0.5
    for name in (
        "all letters",
        "letters glued",
        "answer outside tags",
        "bare letter",
        "several answers",
        "two answers",
    ):
        assert got[name]["accuracy"] == 0 and got[name]["format"] == 0, name
    assert got["headers only"]["content"] == 0 and got["headers only"]["structure"] == 0.5
    assert got["headers with filler"]["content"] == 0
    assert got["story in every stage"]["content"] < 0.5 * got["genuine"]["content"]
    assert got["endless repetition"]["length"] < 0.6 * got["genuine"]["length"]
    assert got["no reasoning"]["structure"] == 0 and got["no reasoning"]["format"] == 1


def test_wrong_letter_and_partial_structure(tokenizer):
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=TOTAL_STEPS)
    item = ITEMS[7]
    st = list(item.gold_stages)
    wrong = next(x for x in item.letters if x != item.answer_letter)
    swapped = (
        FMT.render(st, item.answer_letter)
        .replace("Cue Encoding:", "@@")
        .replace("Goal Clarification:", "Cue Encoding:")
        .replace("@@", "Goal Clarification:")
    )
    dropped = FMT.render(st, item.answer_letter).replace("Cue Interpretation:", "")
    repeated = FMT.render([st[0], st[1] + "\nCue Interpretation: " + st[1], st[2], st[3]], item.answer_letter)
    texts = [FMT.render(st, item.answer_letter), FMT.render(st, wrong), swapped, dropped, repeated]
    s = reward.score_texts(
        texts, [item.answer_letter] * 5, [item.story] * 5, 100, [item.question] * 5, [item.options] * 5
    )
    assert s["accuracy"].tolist() == [1, 0, 1, 1, 1] and s["format"].tolist() == [1, 1, 1, 1, 1]
    assert s["structure"][0] == 1 and all(0 < s["structure"][i] < 1 for i in (2, 3, 4))


def test_random_token_sequences_are_finite_and_in_range(tokenizer):
    config = RewardConfig()
    reward = SIPReward(tokenizer, config, total_steps=TOTAL_STEPS)
    feats = reward.encode_items(ITEMS)
    gen = torch.Generator().manual_seed(0)
    think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    for step in (0, 60, 100):
        B, T = 3334, 96
        ids = torch.randint(0, len(tokenizer) + 5, (B, T), generator=gen)  # a few ids past the vocabulary
        ids[torch.rand(B, T, generator=gen) < 0.05] = think[0]
        ids[torch.rand(B, T, generator=gen) < 0.05] = think[1]
        mask = torch.arange(T) < torch.randint(0, T + 1, (B, 1), generator=gen)
        s = reward.score(ids, mask, feats, torch.randint(0, len(ITEMS), (B,), generator=gen), step)
        for k in KEYS:
            assert s[k].shape == (B,) and s[k].dtype == torch.float32 and torch.isfinite(s[k]).all(), k
        for k in KEYS[1:]:
            assert ((s[k] >= 0) & (s[k] <= 1)).all(), k
        assert ((s["total"] >= 0) & (s["total"] <= config.w_accuracy + config.w_structure + config.w_content)).all()


def test_token_and_text_entry_points_agree(tokenizer):
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=TOTAL_STEPS)
    items = ITEMS[:8]
    texts = [genuine(it) for it in items[:4]] + [hacks(it)["story in every stage"] for it in items[4:]]
    rng = random.Random(0)
    ids, mask = fuzz.tokenize_batch(
        tokenizer, texts, rng, max_tokens=10_000, truncate_p=0.0
    )  # rows end with <|im_end|>
    feats = reward.encode_items(list(reversed(items)))
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(0))
    index = (len(items) - 1 - torch.arange(len(items)))[perm]
    with_eos = reward.score(ids[perm], mask[perm].int(), feats, index, 70)
    no_eos = mask.clone()
    no_eos[torch.arange(len(items)), mask.sum(1) - 1] = 0
    without_eos = reward.score(ids[perm], no_eos[perm], feats, index, 70)
    by_text = reward.score_texts(
        texts,
        [it.answer_letter for it in items],
        [it.story for it in items],
        70,
        [it.question for it in items],
        [it.options for it in items],
    )
    for k in KEYS:
        assert torch.equal(without_eos[k], by_text[k][perm]), k
    for k in ("format", "accuracy", "structure", "content"):  # <|im_end|> only counts as one more token
        assert torch.equal(with_eos[k], by_text[k][perm]), k
    assert (with_eos["length"] != by_text["length"][perm]).all()


def test_cpu_threads_setting_is_restored(tokenizer):
    before = torch.get_num_threads()
    item = ITEMS[0]
    for threads in (0, 1, 2):
        SIPReward(tokenizer, RewardConfig(cpu_threads=threads)).score_texts([genuine(item)], ["A"], [item.story], 0)
        assert torch.get_num_threads() == before


def test_score_texts_without_options_accepts_letters_a_to_d(tokenizer):
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=TOTAL_STEPS)
    item = ITEMS[0]
    texts = [FMT.render(item.gold_stages, x) for x in "ABDE"]
    s = reward.score_texts(texts, ["B"] * 4, [item.story] * 4, 0)
    assert s["format"].tolist() == [1, 1, 1, 0] and s["accuracy"].tolist() == [0, 1, 0, 0]


def test_byte_table_matches_decode(tokenizer):
    reward = SIPReward(tokenizer, RewardConfig())
    pieces = _token_bytes(tokenizer)
    assert (
        len(pieces) == len(tokenizer)
        and pieces[tokenizer.eos_token_id] == b""
        and pieces[tokenizer.pad_token_id] == b""
    )
    for i, piece in enumerate(pieces):
        entry = reward.lexical.token_table[i].item()
        start, n = entry >> 16, entry & 0xFFFF
        assert bytes((reward.lexical.vocab_packed[start : start + n] & 255).tolist()) == piece
        want = tokenizer.decode([i], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if "\ufffd" not in want:  # a lone piece of a multi-byte character decodes to U+FFFD
            assert piece.decode() == want, i


def test_curriculum_and_length_window(tokenizer):
    config = RewardConfig(curriculum_start=0.3, curriculum_end=0.7)
    assert [ref.curriculum(s, 100, config) for s in (0, 30, 50, 70, 100)] == pytest.approx([0, 0, 0.5, 1, 1])
    reward = SIPReward(tokenizer, config, total_steps=100)
    item = ITEMS[1]
    early, late = (
        reward.score_texts([genuine(item)], [item.answer_letter], [item.story], s, [item.question], [item.options])
        for s in (10, 90)
    )
    assert early["total"].item() == pytest.approx(early["length"].item())  # format = accuracy = 1, tau = 0
    assert late["total"].item() == pytest.approx(
        late["length"].item() * (1 + 0.5 * late["structure"].item() + 0.5 * late["content"].item())
    )
    window = reward.lexical._length(torch.tensor([0, 32, 400, 768, 2000]))
    assert window[1].item() == pytest.approx(0.5 * (1 - 1 / (1 + math.exp(10))), rel=1e-6)
    assert window[2] > 0.98 and window[0] < window[1] and window[4] < 0.01


def test_rejects_settings_it_cannot_score(tokenizer):
    for bad in (dict(copy_tolerance=1.0), dict(rep_tolerance=-0.1), dict(len_min=500, len_max=100), dict(rep_ngram=0)):
        with pytest.raises(ConfigError):
            RewardConfig(**bad)
    with pytest.raises(ConfigError, match="--sip.stages A B C"):
        SIPReward(tokenizer, RewardConfig(), fmt=SIPFormat(stages=("A", "B", "C")))
    with pytest.raises(ConfigError):
        SIPReward(
            tokenizer, RewardConfig(), fmt=SIPFormat(stages=("Cue", "Cue:x", "Goal", "Response"), stage_suffix="")
        )

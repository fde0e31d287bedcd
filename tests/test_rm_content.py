"""The reward-model recipe that learns content: the training pairs' kind mix and places, and the
warm start that teaches the tiny model to write the chosen reasoning from the story first."""

import re
from dataclasses import replace

import pytest
import torch

from socialr1.config import ModelConfig
from socialr1.models import build_tiny
from socialr1.reward_model import inputs
from socialr1.reward_model.config import RMWarmStartConfig
from socialr1.reward_model.pairs import KINDS, generate_pairs, synthetic_splits
from socialr1.reward_model.reader import learn_to_read, reading_examples
from socialr1.rewards.content import RM_TEMPLATE, rm_input
from socialr1.sip import SIPFormat
from socialr1.synthetic import CONTAINERS

FMT = SIPFormat()


def test_training_kinds_come_in_the_given_mix_and_held_out_pairs_in_every_kind():
    mix = ("wrong_character", "true_location", "wrong_character", "filler")
    train, held_out = synthetic_splits(200, 80, seed=1, fmt=FMT, containers=4, kinds=mix)
    counts = {k: sum(p.kind == k for p in train) for k in KINDS}
    # Reality questions name nobody, so neither content kind applies to them: they take the next kind.
    assert set(k for k, n in counts.items() if n) == set(mix)
    assert counts["wrong_character"] > counts["filler"] > 0 and counts["true_location"] > 0
    assert {p.kind for p in held_out} == set(KINDS)
    places = set(re.findall(r"\b(?:in|to) the (\w+)", " ".join(p.story for p in train + held_out)))
    assert places - {"kitchen", "garden", "attic", "hall", "shed", "playroom"} <= set(CONTAINERS[:4])
    assert generate_pairs(30, seed=1, containers=4, kinds=mix) == train[:30]


def test_warm_start_teaches_the_reasoning_after_the_template_and_lowers_its_loss():
    torch.manual_seed(0)
    pairs = generate_pairs(24, seed=2, containers=4)
    template = "Story: {story}\nQ: {question}\nReasoning: {reasoning}\nIs this right?"
    corpus = [rm_input(p.story, p.question, p.chosen, template) for p in pairs]
    lm, tok = build_tiny(ModelConfig(tiny=True, tiny_hidden_size=32, tiny_vocab_size=400), corpus, seed=0)
    prompts, targets = reading_examples(tok, pairs, template)
    for p, prompt, target in zip(pairs, prompts, targets):
        assert tok.decode(prompt) == rm_input(p.story, p.question, "", template).removesuffix("\nIs this right?")
        assert tok.decode(prompt + target) == rm_input(p.story, p.question, p.chosen, template) + tok.eos_token
    prompts, _ = reading_examples(tok, pairs, RM_TEMPLATE)
    assert tok.decode(prompts[0]).endswith("[Reasoning]\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model runs far faster on one thread of a shared machine
    try:
        losses = learn_to_read(lm, tok, pairs, template, RMWarmStartConfig(steps=60, lr=3e-3, batch_size=8), 0, False)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_tiny_embed_std_draws_the_embeddings_at_that_scale_and_leaves_every_other_weight():
    corpus = [rm_input(p.story, p.question, p.chosen) for p in generate_pairs(8, seed=3, containers=4)]
    model = ModelConfig(tiny=True, tiny_hidden_size=64, tiny_vocab_size=400)
    plain, _ = build_tiny(model, corpus, seed=5)
    wide, _ = build_tiny(replace(model, tiny_embed_std=0.1), corpus, seed=5)
    assert abs(plain.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert abs(wide.model.embed_tokens.weight.std().item() - 0.1) < 0.01
    assert wide.get_output_embeddings().weight is wide.get_input_embeddings().weight  # still tied
    others, drawn = plain.state_dict(), wide.state_dict()
    others = {n: w for n, w in others.items() if "embed_tokens" not in n and "lm_head" not in n}
    assert others and all(torch.equal(w, drawn[n]) for n, w in others.items())


def test_dense_loss_is_the_pairwise_loss_averaged_over_each_pairs_aligned_ending(tmp_path, world):
    """--loss.dense, against its definition evaluated one unpadded text at a time: tokens compared
    from the end through the two texts' common ending and the first token where they differ."""
    import torch.nn.functional as F

    from socialr1.config import ConfigError
    from socialr1.reward_model.config import parse
    from socialr1.reward_model.trainer import RMTrainer, compared_tokens
    from tests.test_reward_model import TINY

    assert compared_tokens([1, 2, 3, 9, 5, 6], [1, 2, 4, 5, 6]) == 3
    assert compared_tokens([7, 1, 2], [8, 1, 2]) == 3 and compared_tokens([1, 2], [1, 3]) == 1
    assert compared_tokens([1, 2, 3], [2, 3]) == 2  # one the other's ending: the shorter, whole
    with pytest.raises(ConfigError, match=r"^--loss.dense True: must be off unless --input.unit think"):
        parse([*TINY, "--loss.dense", "--input.unit", "stage"])

    trainer = RMTrainer(parse([*TINY, "--loss.dense", "--output-dir", str(tmp_path / "run")]))
    trainer.setup()
    head = trainer.policy
    with torch.no_grad():
        head.lm.score.weight.normal_(generator=torch.Generator().manual_seed(0))  # a zero head scores 0 everywhere
    margin, center = trainer.cfg.loss.margin, trainer.cfg.loss.center
    pairs = list(range(8))
    scores, losses = trainer.pair_scores(pairs)  # one right-padded batch
    for p, (got_scores, got_loss) in zip(pairs, zip(scores, losses)):
        chosen, rejected = trainer.train_ids[2 * p][0], trainer.train_ids[2 * p + 1][0]
        one = [head(torch.tensor([t]), torch.ones(1, len(t), dtype=torch.long), every_token=True)[0] for t in (chosen, rejected)]
        terms = []
        for back in range(1, min(len(chosen), len(rejected)) + 1):
            terms.append(-F.logsigmoid(one[0][-back] - one[1][-back] - margin))
            if chosen[-back] != rejected[-back]:
                break
        last = torch.stack([one[0][-1], one[1][-1]])
        torch.testing.assert_close(got_scores, last.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(got_loss, (torch.stack(terms).mean() + center * last.square().mean()).detach(), atol=1e-5, rtol=0)
    ids, mask = inputs.pad_right([trainer.train_ids[i][0] for i in range(16)], trainer.pad_id)
    torch.testing.assert_close(head(ids, mask), head.lm(input_ids=ids, attention_mask=mask).logits[:, 0], atol=1e-5, rtol=0)
    trainer.close()

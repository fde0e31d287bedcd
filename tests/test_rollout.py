import pytest
import torch

from socialr1.models import stop_token_ids
from socialr1.policy import LossSettings, Policy
from socialr1.prompts import encode_prompts
from socialr1.rollout import Engine, Rollout, SamplingParams, pad_left, sample, stop_mask
from socialr1.rollout.sampling import choose
from socialr1.sip import SIPFormat


@pytest.fixture()
def lively(lm):
    """The tiny model with larger random weights: greedy decoding then varies from token to token,
    so a wrong mask or position shows up as a different token."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return lm.eval()


def ragged_prompts(tokenizer, items, n=3):
    prompts = encode_prompts(tokenizer, items[:n], SIPFormat())
    prompts[1] = prompts[1][:40]  # ragged lengths -> real left padding
    return prompts


def hf_generate(lm, prompts, group, pad_id, stops, max_new_tokens):
    ids, mask = pad_left([p for p in prompts for _ in range(group)], pad_id)
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                      pad_token_id=pad_id, eos_token_id=list(stops))
    comp = out[:, ids.shape[1]:]
    cmask = stop_mask(comp, stops)
    return comp.masked_fill(cmask == 0, pad_id), cmask


def test_stop_mask_keeps_first_stop_token():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert stop_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_pad_left_and_rows_trim_shared_padding():
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    comp = torch.tensor([[7, 2, 0], [8, 8, 2]])
    r = Rollout(ids, mask, comp, stop_mask(comp, [2]), torch.tensor([0, 1]))
    part = r.rows(1, 2)  # row 1: one prompt token, three completion tokens
    assert part.prompt_ids.tolist() == [[4]] and part.completion_ids.tolist() == [[8, 8, 2]]
    assert r.rows(0, 1).completion_ids.tolist() == [[7, 2]]
    assert [p.completion_ids.tolist() for p in r.split(1)] == [[[7, 2]], [[8, 8, 2]]]


@pytest.mark.parametrize("group", [1, 3])
def test_greedy_equals_hf_generate_token_for_token(tokenizer, lively, items, group):
    """Ragged prompts, each prefilled once for its G rows; rows that stop early (two prompts' third
    greedy token is made a stop token) end with exact masks, and finished rows leave the decode batch."""
    prompts = ragged_prompts(tokenizer, items)
    pad, steps = tokenizer.pad_token_id, 30
    free, _ = hf_generate(lively, prompts, 1, pad, stop_token_ids(tokenizer), steps)
    stops = tuple(sorted(set(stop_token_ids(tokenizer)) | {int(free[0, 2]), int(free[2, 2])}))
    expected, expected_mask = hf_generate(lively, prompts, group, pad, stops, steps)
    r = sample(lively, prompts, [4, 5, 6], group, SamplingParams(steps, temperature=0.0, stop_ids=stops), pad)
    assert r.item_index.tolist() == [i for i in (4, 5, 6) for _ in range(group)]
    width = min(r.completion_ids.shape[1], expected.shape[1])  # both may stop before `steps`, at different checks
    assert torch.equal(r.completion_ids[:, :width], expected[:, :width])
    assert torch.equal(r.completion_mask[:, :width], expected_mask[:, :width])
    assert not expected_mask[:, width:].any() and not r.completion_mask[:, width:].any()
    lengths = r.completion_mask.sum(1)
    assert lengths.min() <= 3 < lengths.max()  # some rows stopped early, some went on


def test_seeded_sampling_is_reproducible_and_stop_strings_end_rows_exactly(tokenizer, lively, items):
    prompts, pad = ragged_prompts(tokenizer, items, 2), tokenizer.pad_token_id
    params = SamplingParams(24, temperature=1.0, stop_ids=tuple(stop_token_ids(tokenizer)))

    def run(seed, p=params):
        return sample(lively, prompts, [0, 1], 2, p, pad, generator=torch.Generator().manual_seed(seed), tokenizer=tokenizer)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.completion_ids, b.completion_ids) and not torch.equal(a.completion_ids, c.completion_ids)
    row = a.completion_ids[0, : int(a.completion_mask[0].sum())].tolist()
    stop = tokenizer.decode(row[9:11])  # a string that ends inside the row, crossing a token boundary
    cut = run(1, SamplingParams(24, temperature=1.0, stop_ids=params.stop_ids, stop_strings=("\u2603", stop)))
    n = int(cut.completion_mask[0].sum())
    assert stop in tokenizer.decode(row[:n]) and stop not in tokenizer.decode(row[: n - 1])
    assert cut.completion_ids[0, :n].tolist() == row[:n] and (cut.completion_ids[0, n:] == pad).all()
    assert cut.completion_mask[0].tolist() == [1] * n + [0] * (cut.completion_ids.shape[1] - n)


@pytest.mark.parametrize("check_every", [3, 8])
def test_a_stop_string_across_two_host_checks_ends_the_row(tokenizer, lively, items, check_every):
    """The host looks for stop strings every `check_every` tokens; a string whose first token comes
    before a check and whose last comes after it still ends the row at its last token."""
    prompts, pad = ragged_prompts(tokenizer, items, 2), tokenizer.pad_token_id
    c = check_every

    def run(stop_strings=()):
        params = SamplingParams(3 * c, temperature=1.0, stop_strings=stop_strings, check_every=c)
        return sample(lively, prompts, [0, 1], 4, params, pad, generator=torch.Generator().manual_seed(0), tokenizer=tokenizer)

    free = run()
    for r, row in enumerate(free.completion_ids.tolist()):
        stop = tokenizer.decode(row[c - 1 : c + 1])  # token c - 1 is read at one check, token c at the next
        if stop not in tokenizer.decode(row[:c]) and stop not in tokenizer.decode(row[c : c + 1]):
            break
    else:
        pytest.fail("no row has a string that first appears across the check")
    cut = run((stop,))
    assert cut.completion_mask[r].tolist() == [1] * (c + 1) + [0] * (cut.completion_ids.shape[1] - c - 1)
    assert cut.completion_ids[r, : c + 1].tolist() == row[: c + 1]


def test_sampler_logprobs_equal_trainer_logprobs_at_temperature(tokenizer, lively, items):
    """The log-prob the sampler reports for each drawn token is the one the loss scores (full
    vocabulary at the same temperature), in the plain and the prompt-shared training forward."""
    prompts = ragged_prompts(tokenizer, items)
    params = SamplingParams(16, temperature=0.7, stop_ids=tuple(stop_token_ids(tokenizer)))
    r = sample(lively, prompts, [0, 1, 2], 2, params, tokenizer.pad_token_id,
               generator=torch.Generator().manual_seed(0), with_logprobs=True)
    for group in (1, 2):
        logp, _ = Policy(lively).logprobs(r, temperature=0.7, group=group)
        torch.testing.assert_close(logp, r.logprobs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_one_and_tiny_top_p_are_greedy(tokenizer, lively, items, seed):
    prompts, pad = ragged_prompts(tokenizer, items), tokenizer.pad_token_id
    stops = tuple(stop_token_ids(tokenizer))
    greedy = sample(lively, prompts, [0, 1, 2], 2, SamplingParams(12, temperature=0.0, stop_ids=stops), pad)
    for setting in (dict(top_k=1), dict(top_p=1e-6)):
        params = SamplingParams(12, temperature=1.3, stop_ids=stops, **setting)
        r = sample(lively, prompts, [0, 1, 2], 2, params, pad, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(r.completion_ids, greedy.completion_ids), setting


def test_sampling_draws_from_the_full_tempered_distribution(tokenizer, lm, items):
    """With top-k and top-p off nothing narrows the distribution: not HF's top_k=50, nor the
    generation defaults a model ships (Qwen3: T 0.6, top_p 0.95, top_k 20)."""
    lm.generation_config.update(do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    logits = torch.randn(1, 300).expand(40_000, -1) * 2
    tokens = choose(logits, SamplingParams(1, temperature=0.8), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=300).float() / tokens.numel()
    torch.testing.assert_close(freq, (logits[0] / 0.8).softmax(-1), atol=6e-3, rtol=0)
    prompts = encode_prompts(tokenizer, items[:1], SIPFormat())
    r = sample(lm, prompts, [0], 600, SamplingParams(1, temperature=1.0), tokenizer.pad_token_id,
               generator=torch.Generator().manual_seed(0))
    assert r.completion_ids[:, 0].unique().numel() > 100  # a random tiny model is near uniform over ~1k tokens


def test_prompt_shared_loss_and_gradients_equal_plain_with_activation_checkpointing(tokenizer, lively, items):
    prompts = ragged_prompts(tokenizer, items)
    stops = tuple(stop_token_ids(tokenizer))
    r = sample(lively, prompts, [0, 1, 2], 3, SamplingParams(14, temperature=1.0, stop_ids=stops),
               tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    ends = torch.tensor([14, 3, 9, 1, 14, 7, 2, 14, 11])  # ragged completion lengths too
    r.completion_mask = (torch.arange(14)[None] < ends[:, None]).long()
    r.completion_ids = r.completion_ids.masked_fill(r.completion_mask == 0, tokenizer.pad_token_id)
    policy = Policy(lively)
    lively.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lively.train()
    settings = LossSettings(0.04, 0.2, 0.2, "grpo", 1.0, 14)
    base, _ = policy.logprobs(r, 1.0)
    adv = torch.linspace(-1, 1, len(r))
    results = []
    for group in (1, 3):
        lively.zero_grad()
        loss, stats = policy.loss(r, adv, base.detach() + 0.05, base.detach() - 0.1, settings, group)
        loss.backward()
        results.append((loss.detach(), stats["kl"], {n: p.grad.clone() for n, p in lively.named_parameters()}))
    (l1, kl1, g1), (l3, kl3, g3) = results
    torch.testing.assert_close(l3, l1)
    torch.testing.assert_close(kl3, kl1)
    for name in g1:
        torch.testing.assert_close(g3[name], g1[name], atol=1e-6, rtol=1e-4, msg=name)


def test_compiled_decode_step_compiles_one_graph_per_bucket(tokenizer, items):
    """--rollout.compile on CPU (inductor): prompts of three lengths in two cache buckets give two
    graphs, each logged, and the compiled greedy decode equals the eager one."""
    from torch._dynamo.utils import counters

    from socialr1 import tiny

    torch._dynamo.reset()
    lm = tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0).eval()  # compiles fastest
    prompts = encode_prompts(tokenizer, items[:2], SIPFormat())
    params = SamplingParams(6, temperature=0.0, stop_ids=tuple(stop_token_ids(tokenizer)))
    logged = []
    engine = Engine(compile=True, bucket=64, log=logged.append)
    before = counters["stats"]["unique_graphs"]
    for n in (50, 55, 70):  # prompt buckets 64, 64, 128 (+ 64 for the 6 new tokens)
        batch = [p[:n] for p in prompts]
        compiled = sample(lm, batch, [0, 1], 1, params, tokenizer.pad_token_id, engine=engine)
        eager = sample(lm, batch, [0, 1], 1, params, tokenizer.pad_token_id)
        assert torch.equal(compiled.completion_ids, eager.completion_ids)
    assert engine.graphs == {(2, 128), (2, 192)} and len(logged) == 2
    assert counters["stats"]["unique_graphs"] - before == 2

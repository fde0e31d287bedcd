"""Every setting that changes training, checked through `Trainer.step` / `Trainer.update` against a
reference written here from the definitions (TRL's GRPO loss, torch's AdamW, HF's sampling filters):
plain per-row forwards of an unsharded copy of the weights, with no padding, no kernels and no code
from socialr1 beyond the model's weights. A setting the trainer ignores moves a number here."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from socialr1.config import parse
from socialr1.rollout import Rollout, pad_left
from socialr1.trainer import Trainer
from socialr1.warmstart import gold_completions
from tests.test_distributed import TINY

Params = dict[str, torch.Tensor]


def make_trainer(tmp_path, *flags: str) -> Trainer:
    base = ["--output-dir", str(tmp_path / "run"), "--sample-every", "0", "--grpo.beta", "0", "--optim.grad-clip", "0",
            "--rollout.prompts-per-step", "4", "--rollout.group-size", "2"]
    trainer = Trainer(parse([*TINY, *base, *flags]))
    trainer.setup()
    return trainer


def full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) parameter or gradient's whole value."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def weights(trainer: Trainer) -> Params:
    """The full (unsharded) parameters, named as in the plain model (the tied head: once)."""
    return {k.removeprefix("lm."): full(p).clone() for k, p in trainer.policy.named_parameters()}


def plain_model(trainer: Trainer, params: Params) -> torch.nn.Module:
    lm = AutoModelForCausalLM.from_config(trainer.policy.lm.config).float()
    missing, unexpected = lm.load_state_dict(params, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected and lm.lm_head.weight is lm.model.embed_tokens.weight
    return lm


class OptimizerProbe:
    """Records, at every optimizer step of the trainer, the parameters and the (clipped) gradients
    it is about to apply."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.before: list[Params] = []
        self.grads: list[Params] = []
        trainer.opt.register_step_pre_hook(lambda *_: self._record())

    def _record(self) -> None:
        self.before.append(weights(self.trainer))
        self.grads.append({k.removeprefix("lm."): full(p.grad).clone() for k, p in self.trainer.policy.named_parameters()})


def rows_of(batch: Rollout) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt, completion) token ids of each row, padding removed."""
    return [(p[m.bool()], c[cm.bool()]) for p, m, c, cm in
            zip(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)]


def completion_logits(lm: torch.nn.Module, prompt: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """[L, V] logits that predict each completion token, from one unpadded sequence."""
    seq = torch.cat([prompt, completion])[None]
    return lm(seq).logits[0, len(prompt) - 1 : -1].float()


def row_logps(lm: torch.nn.Module, batch: Rollout, temperature: float) -> list[torch.Tensor]:
    out = []
    for prompt, comp in rows_of(batch):
        logits = completion_logits(lm, prompt, comp) / temperature
        out.append(logits.log_softmax(-1).gather(1, comp[:, None]).squeeze(1))
    return out


def reference_loss(logp, old, ref, adv, cfg, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's GRPO loss over ragged rows: logp, old, ref are lists of [L_i]; adv: [N]."""
    g = cfg.grpo
    per_row, low, high = [], 0, 0
    for lp, o, r, a in zip(logp, old, ref, adv):
        ratio = torch.exp(lp - o)
        token = -torch.minimum(ratio * a, ratio.clamp(1 - g.eps_low, 1 + g.eps_high) * a)
        token = token + g.beta * (torch.exp(r - lp) - (r - lp) - 1)
        per_row.append(token)
        low += int(((ratio < 1 - g.eps_low) & (a < 0)).sum())
        high += int(((ratio > 1 + g.eps_high) & (a > 0)).sum())
    n, tokens = len(per_row), sum(len(t) for t in per_row)
    if g.loss_type == "grpo":
        loss = sum(t.mean() for t in per_row) / n
    elif g.loss_type == "dr_grpo":
        loss = sum(t.sum() for t in per_row) / (n * cfg.rollout.max_new_tokens)
    elif g.loss_type == "dapo":
        loss = sum(t.sum() for t in per_row) / tokens
    else:  # bnpo: each micro-batch normalised by its own tokens, then averaged
        parts = [per_row[s : s + micro] for s in range(0, n, micro)]
        loss = sum(sum(t.sum() for t in p) / sum(len(t) for t in p) for p in parts) / len(parts)
    kl = sum(float((torch.exp(r - lp) - (r - lp) - 1).detach().sum()) for lp, r in zip(logp, ref)) / tokens
    return loss, {"kl": kl, "low": low / tokens, "high": high / tokens, "region": (low + high) / tokens}


def reference_grads(trainer, params: Params, batch, adv, old, ref, micro) -> tuple[Params, torch.Tensor, dict]:
    lm = plain_model(trainer, params)
    logp = row_logps(lm, batch, trainer.cfg.rollout.temperature)
    loss, stats = reference_loss(logp, old, ref, adv, trainer.cfg, micro)
    loss.backward()
    return {k: p.grad.clone() for k, p in lm.named_parameters()}, loss.detach(), stats


def adamw(params: Params, grads: list[Params], lrs: list[float], betas, weight_decay, eps=1e-8) -> list[Params]:
    """torch's AdamW, written out: the parameters after each step."""
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(x) for k, x in params.items()}
    p, out = dict(params), []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        nxt = {}
        for k in p:
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g[k]
            v[k] = betas[1] * v[k] + (1 - betas[1]) * g[k] ** 2
            step = (m[k] / (1 - betas[0] ** t)) / ((v[k] / (1 - betas[1] ** t)).sqrt() + eps)
            nxt[k] = p[k] * (1 - lr * weight_decay) - lr * step
        p = nxt
        out.append(p)
    return out


def assert_close_all(got: Params, want: Params, rel: float, what: str) -> None:
    """Each tensor within `rel` of its reference, relative in the 2-norm."""
    for k in want:
        err, size = (got[k] - want[k]).norm(), want[k].norm()
        assert err <= rel * size + 1e-9, f"{what}: {k}: |diff| {err:.3g} vs |want| {size:.3g}"


def fixed_batch(trainer: Trainer) -> tuple[Rollout, torch.Tensor]:
    """4 prompts x 2 rows, short (the tests' cost is in tokens): prompt tails and gold completion
    heads of ragged lengths, advantages of both signs."""
    gold = gold_completions(trainer.tokenizer, trainer.items[:4], trainer.cfg.sip)
    prompts = [trainer.prompts[i][-(24 + 5 * i) :] for i in range(4) for _ in range(2)]
    comps = [gold[i][k : k + 6 + 3 * (2 * i + k)] for i in range(4) for k in range(2)]
    ids, mask = pad_left(prompts, trainer.pad_id)
    width = max(map(len, comps))
    comp = torch.tensor([c + [trainer.pad_id] * (width - len(c)) for c in comps])
    cmask = (torch.arange(width) < torch.tensor([[len(c)] for c in comps])).long()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, 0.3, -0.3])
    return Rollout(ids, mask, comp, cmask, torch.arange(4).repeat_interleave(2)), adv


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_update_equals_reference_loss_and_adamw(tmp_path, world, loss_type):
    """Two iterations on one batch with beta, asymmetric clipping, T != 1 and micro-batches of 3:
    each iteration's gradient is the reference loss's (old and reference log-probs from the
    weights before the update; micro-batch accumulation equal to the unsplit batch, except bnpo,
    which normalises per micro-batch as TRL), each step is torch's AdamW with the configured lr,
    betas and weight decay, and the reported loss, KL and clip fractions are the reference's."""
    micro = 3
    trainer = make_trainer(
        tmp_path, "--grpo.loss-type", loss_type, "--grpo.num-iterations", "2", "--grpo.beta", "0.3",
        "--grpo.eps-low", "0.05", "--grpo.eps-high", "0.15", "--grpo.micro-batch-size", str(micro),
        "--rollout.temperature", "0.7", "--rollout.max-new-tokens", "400", "--optim.lr", "1e-2",
        "--optim.weight-decay", "0.1", "--optim.betas", "0.8", "0.95",
    )
    batch, adv = fixed_batch(trainer)
    probe = OptimizerProbe(trainer)
    theta0 = weights(trainer)
    metrics = trainer.update(batch, adv)
    assert len(probe.grads) == 2  # num_iterations optimizer steps

    with torch.no_grad():
        old = row_logps(plain_model(trainer, theta0), batch, 0.7)  # old policy and reference: the weights before
    assert_close_all(probe.before[0], theta0, 0, "weights before the update")
    losses, stats = [], []
    for it in range(2):
        grads, loss, s = reference_grads(trainer, probe.before[it], batch, adv, old, old, micro)
        assert_close_all(probe.grads[it], grads, 2e-3, f"gradient of iteration {it}")
        losses.append(loss.item())
        stats.append(s)
    # The second iteration sees ratios != 1: clipping acts on both sides and the KL is non-zero.
    assert stats[1]["low"] > 0 and stats[1]["high"] > 0 and stats[1]["kl"] > 0
    assert stats[0]["region"] == 0 and stats[0]["kl"] == 0
    expected = {"loss": sum(losses) / 2, "kl": (stats[0]["kl"] + stats[1]["kl"]) / 2,
                "clip_ratio/low_mean": stats[1]["low"] / 2, "clip_ratio/high_mean": stats[1]["high"] / 2,
                "clip_ratio/region_mean": stats[1]["region"] / 2}
    for key, want in expected.items():
        assert metrics[key] == pytest.approx(want, rel=2e-3, abs=1e-7), key

    steps = adamw(theta0, probe.grads, [1e-2, 1e-2], (0.8, 0.95), 0.1)
    assert_close_all(probe.before[1], steps[0], 1e-5, "weights after AdamW step 1")
    assert_close_all(weights(trainer), steps[1], 1e-5, "weights after AdamW step 2")


def test_grad_clip_scales_the_gradient_to_the_limit(tmp_path, world):
    trainer = make_trainer(tmp_path, "--optim.grad-clip", "0.01", "--grpo.micro-batch-size", "8")
    batch, adv = fixed_batch(trainer)
    probe = OptimizerProbe(trainer)
    theta0 = weights(trainer)
    metrics = trainer.update(batch, adv)
    with torch.no_grad():
        old = row_logps(plain_model(trainer, theta0), batch, 1.0)
    grads, _, _ = reference_grads(trainer, theta0, batch, adv, old, old, 8)
    norm = torch.cat([g.flatten() for g in grads.values()]).norm().item()
    assert norm > 0.1  # the limit acts
    assert metrics["grad_norm"] == pytest.approx(norm, rel=2e-3)  # reported before clipping
    assert_close_all(probe.grads[0], {k: g * 0.01 / norm for k, g in grads.items()}, 2e-3, "clipped gradient")


def reference_lr(step: int, peak: float, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` optimizer steps (the first at peak / warmup), then the decay,
    reaching 0 where a step `total` would be."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / (total - warmup)
    return peak * {"constant": 1.0, "linear": 1.0 - done, "cosine": (1 + math.cos(math.pi * done)) / 2}[schedule]


@pytest.mark.parametrize("schedule,steps,iterations", [("linear", 5, 1), ("cosine", 3, 2)])
def test_lr_schedule_and_warmup_reach_the_optimizer(tmp_path, world, schedule, steps, iterations):
    """--steps x --grpo.num-iterations optimizer steps; each moves the weights by AdamW with the
    reference lr of its index."""
    peak = 1e-3
    trainer = make_trainer(tmp_path, "--steps", str(steps), "--optim.schedule", schedule, "--optim.warmup-steps", "2",
                           "--optim.lr", str(peak), "--grpo.num-iterations", str(iterations))
    batch, adv = fixed_batch(trainer)
    probe = OptimizerProbe(trainer)
    theta0 = weights(trainer)
    for _ in range(steps):
        trainer.update(batch, adv)
    total = steps * iterations
    lrs = [reference_lr(s, peak, 2, total, schedule) for s in range(total)]
    assert len(probe.grads) == total and len(set(lrs)) >= 3
    cfg = trainer.cfg.optim
    after = adamw(theta0, probe.grads, lrs, cfg.betas, cfg.weight_decay)
    for s in range(1, total):
        assert_close_all(probe.before[s], after[s - 1], 1e-5, f"weights after optimizer step {s}")
    assert_close_all(weights(trainer), after[-1], 1e-5, "final weights")


@torch.no_grad()
def sequence_logps(trainer: Trainer, batch: Rollout) -> torch.Tensor:
    return torch.stack([lp.sum() for lp in row_logps(plain_model(trainer, weights(trainer)), batch, 1.0)])


def test_one_update_moves_each_completion_the_way_its_advantage_says(tmp_path, world):
    """Absolute direction: after one Trainer.update the positive-advantage completions are more
    likely and the negative ones less, each by a clear margin."""
    trainer = make_trainer(tmp_path, "--optim.lr", "1e-3", "--grpo.micro-batch-size", "2")
    g = torch.Generator().manual_seed(0)
    vocab = trainer.policy.lm.config.vocab_size
    prompts = [trainer.prompts[i] for i in (0, 0, 1, 1)]
    ids, mask = pad_left(prompts, trainer.pad_id)
    # Four unrelated token strings (no stop token): pushing one up does not push another.
    comp = torch.randint(10, vocab - 10, (4, 12), generator=g)
    comp = comp.masked_fill(torch.isin(comp, torch.tensor(trainer.stop_ids)), 10)
    batch = Rollout(ids, mask, comp, torch.ones_like(comp), torch.tensor([0, 0, 1, 1]))
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    before = sequence_logps(trainer, batch)
    trainer.update(batch, adv)
    change = sequence_logps(trainer, batch) - before
    assert (change * adv > 0.5).all(), change


def test_num_iterations_large_lr_reports_clipping(tmp_path, world):
    """The old policy's log-probs are used: with 3 iterations at a large lr the ratios leave the
    clip range, and the trainer says so."""
    trainer = make_trainer(tmp_path, "--grpo.num-iterations", "3", "--optim.lr", "3e-2")
    batch, adv = fixed_batch(trainer)
    metrics = trainer.update(batch, adv)
    assert metrics["clip_ratio/low_mean"] > 0.01 and metrics["clip_ratio/high_mean"] > 0.01


def spy_update(trainer: Trainer) -> list[tuple[Rollout, torch.Tensor]]:
    """Records what Trainer.step hands to Trainer.update (the rollout and its advantages), then runs it."""
    calls, real = [], trainer.update

    def update(batch: Rollout, advantages: torch.Tensor, *rest):
        calls.append((batch, advantages.detach().clone()))
        return real(batch, advantages, *rest)

    trainer.update = update
    return calls


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """HF's order: temperature, then top-k, then top-p (the most likely tokens until their mass
    reaches top_p); [L, V] -> renormalised probabilities."""
    z = logits / temperature
    if top_k:
        z = z.masked_fill(z < z.topk(top_k, dim=-1).values[:, -1:], -math.inf)
    p = z.softmax(-1)
    sorted_p, order = p.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(1, order, mass_before < top_p)
    p = p * keep
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.25, 1.0, 0), (1.0, 0.3, 0), (1.0, 1.0, 8)])
def test_step_samples_from_the_configured_distribution(tmp_path, world, temperature, top_p, top_k):
    """The tokens Trainer.step trains on are drawn from the policy's distribution with the
    configured temperature, top-p and top-k, and stop at max_new_tokens: no token outside the
    filtered support, and as many tokens in each likelihood-rank bin as the reference
    probabilities predict (greedy decoding, a library default top-k of 50 or a wrong temperature
    miss by many standard deviations)."""
    trainer = make_trainer(tmp_path, "--rollout.temperature", str(temperature), "--rollout.top-p", str(top_p),
                           "--rollout.top-k", str(top_k), "--rollout.max-new-tokens", "16", "--rollout.group-size", "4")
    lm = plain_model(trainer, weights(trainer))
    calls = spy_update(trainer)
    trainer.step(0)
    batch = calls[0][0]
    lengths = batch.completion_mask.sum(1)
    last = batch.completion_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    stopped = torch.isin(last, torch.tensor(trainer.stop_ids))
    assert batch.completion_ids.shape[1] <= 16 and (lengths[~stopped] == 16).all()

    edges = torch.tensor([1, 4, 16, 64])  # likelihood-rank bins [0], [1, 4), [4, 16), [16, 64), [64, V)
    observed, expected, variance = torch.zeros(5), torch.zeros(5), torch.zeros(5)
    with torch.no_grad():
        for prompt, comp in rows_of(batch):
            logits = completion_logits(lm, prompt, comp)  # [L, V]
            q = filtered_probs(logits, temperature, top_p, top_k)
            loose = filtered_probs(logits, temperature, min(top_p + 0.02, 1.0), top_k + 1 if top_k else 0)
            assert (loose.gather(1, comp[:, None]) > 0).all(), "a token outside the top-k / top-p support"
            rank = (logits > logits.gather(1, comp[:, None])).sum(1)  # [L] 0 = most likely
            observed += torch.bincount(torch.bucketize(rank, edges, right=True), minlength=5)
            order = logits.argsort(-1, descending=True)
            bin_of = torch.bucketize(torch.arange(logits.shape[1]), edges, right=True)  # by rank
            per_bin = torch.zeros(len(comp), 5).index_add_(1, bin_of, q.gather(1, order))  # [L, 5]
            expected += per_bin.sum(0)
            variance += (per_bin * (1 - per_bin)).sum(0)
    assert (observed - expected).abs().le(4.5 * variance.sqrt() + 1.5).all(), (observed, expected)


def test_rollout_completions_end_at_the_configured_stop_string(tmp_path, world):
    """--rollout.stop-strings reaches the sampler the trainer uses: each completion ends at the
    token that first completes the string (or at a stop token or max_new_tokens, never past the
    string), as decoding the completion's tokens shows."""
    stop, limit = "e", 24
    trainer = make_trainer(tmp_path, "--rollout.stop-strings", stop, "--rollout.max-new-tokens", str(limit))
    batch = trainer.rollout(0)
    by_string = 0
    for row, n in zip(batch.completion_ids.tolist(), batch.completion_mask.sum(1).tolist()):
        assert stop not in trainer.tokenizer.decode(row[: n - 1]), "a completion goes on past the stop string"
        ended = stop in trainer.tokenizer.decode(row[:n])
        assert ended or row[n - 1] in trainer.stop_ids or n == limit
        by_string += ended
    assert by_string >= len(batch) // 2  # the case is tested: most rows meet the string


def gold_batch(trainer: Trainer) -> Rollout:
    """4 prompts x 3 completions, each the gold SIP trace ("gold"), the same trace choosing a wrong
    letter ("wrong") or the first half of the gold trace ("half"): rewards differ within every
    group, and their spread differs between groups."""
    sip, tok = trainer.cfg.sip, trainer.tokenizer
    kinds = [("gold", "wrong", "half"), ("gold", "gold", "wrong"), ("gold", "half", "half"), ("wrong", "wrong", "half")]
    comps = []
    for it, group in zip(trainer.items[:4], kinds):
        wrong = "A" if it.answer_letter != "A" else "B"
        right, other = (tok(sip.render(it.gold_stages, a) + tok.eos_token, add_special_tokens=False)["input_ids"]
                        for a in (it.answer_letter, wrong))
        comps += [{"gold": right, "wrong": other, "half": right[: len(right) // 2]}[k] for k in group]
    width = max(map(len, comps))
    comp = torch.tensor([c + [trainer.pad_id] * (width - len(c)) for c in comps])
    cmask = (torch.arange(width) < torch.tensor([[len(c)] for c in comps])).long()
    ids, mask = pad_left([trainer.prompts[i][-16:] for i in range(4) for _ in range(3)], trainer.pad_id)
    return Rollout(ids, mask, comp, cmask, torch.arange(4).repeat_interleave(3))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_step_advantages_follow_scale_rewards(tmp_path, world, scale):
    trainer = make_trainer(tmp_path, "--rollout.group-size", "3", "--grpo.scale-rewards", scale)
    batch = gold_batch(trainer)
    trainer.rollout = lambda step: batch
    calls = spy_update(trainer)
    trainer.step(0)
    r = trainer.reward.score(batch.completion_ids, batch.completion_mask, trainer.features, batch.item_index, 0)["total"]
    groups = r.view(4, 3)
    centred = (groups - groups.mean(1, keepdim=True)).flatten()
    expected = {"group": centred / (groups.std(1).repeat_interleave(3) + 1e-4), "batch": centred / (r.std() + 1e-4),
                "none": centred}
    for a, b in [("group", "batch"), ("group", "none"), ("batch", "none")]:
        assert (expected[a] - expected[b]).abs().max() > 0.1  # the three scalings are told apart here
    torch.testing.assert_close(calls[0][1], expected[scale], atol=1e-5, rtol=1e-5)


def test_step_weights_the_process_reward_by_the_curriculum(tmp_path, world):
    """Additive reward over 10 steps, curriculum from 20% to 60%: the total at step s carries
    tau(s) = clamp((s/10 - 0.2) / 0.4, 0, 1) of the structure and content scores."""
    trainer = make_trainer(tmp_path, "--steps", "10", "--reward.curriculum-start", "0.2", "--reward.curriculum-end", "0.6",
                           "--rollout.group-size", "3", "--optim.lr", "1e-6")
    batch = gold_batch(trainer)
    trainer.rollout = lambda step: batch
    w = trainer.cfg.reward
    assert w.mode == "additive"
    for step, tau in [(0, 0.0), (3, 0.25), (5, 0.75), (8, 1.0)]:
        m = {k.removeprefix("reward/").removesuffix("/mean"): v for k, v in trainer.step(step).items()}
        assert m["structure"] > 0.1 and m["content"] > 0.1
        want = (w.w_format * m["format"] + w.w_accuracy * m["accuracy"] + w.w_length * m["length"]
                + tau * (w.w_structure * m["structure"] + w.w_content * m["content"]))
        assert m["total"] == pytest.approx(want, rel=1e-5), step

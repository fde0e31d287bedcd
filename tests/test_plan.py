"""The plan (`python train.py plan ...`): memory per phase from the trainer's code on fake tensors
equals what the same tracker measures on real tensors; FLOPs and decode bytes against the analytic
count of a Qwen3 decoder; a Qwen3-4B plan at 8 ranks has every phase and sane sizes."""

import dataclasses
import functools
import json

import pytest
import torch.distributed as dist

from socialr1.config import parse
from socialr1.plan import split_args
from socialr1.plan.config import GPUS, PlanConfig
from socialr1.plan.report import changed_flags, fit_search, fits, render, rows, timings
from socialr1.plan.run import PHASES, TOTAL, architecture, record
from tests.test_distributed import torchrun

# A tiny GRPO step: 2 prompts x G 4, 16 new tokens, micro-batches of 4 (one group each).
TINY = ["demo", "--rollout.prompts-per-step", "2", "--rollout.group-size", "4", "--rollout.max-new-tokens", "16",
        "--grpo.micro-batch-size", "4", "--data.max-prompt-tokens", "48", "--data.synthetic", "16"]


@functools.lru_cache(maxsize=None)
def planned(args: tuple[str, ...], world_size: int = 1, fake: bool = True, completion_tokens: int | None = None):
    return record(parse(list(args)), PlanConfig(world_size=world_size, completion_tokens=completion_tokens), fake=fake)


@pytest.fixture(autouse=True, scope="module")
def own_process_group():
    """The plan makes its own default group (a fake world, or a world of one): the one-rank gloo
    group that earlier tests left (conftest's `world`) is set aside meanwhile, then made again."""
    had = dist.is_initialized()
    if had:
        dist.destroy_process_group()
    yield
    if had and not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def test_split_args_separates_plan_flags():
    train, plan = split_args(["plan", "socialr1-8b", "--plan.gpu", "h200", "--steps", "3", "--plan.no-fit", "--plan"])
    assert train == ["socialr1-8b", "--steps", "3"]
    assert plan == ["--gpu", "h200", "--no-fit"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_plan_memory_equals_the_real_run(checkpointing):
    """The same step on real tensors (a world of one, sampling that never stops a row, so the shapes
    are the plan's worst case) and on fake ones: every phase's peak and every category at it agree.
    Tolerance 1% + 64 KiB: the two runs make the same tensors through the same code; what may differ
    is only bookkeeping the fake run does not allocate (e.g. a kernel's scratch)."""
    args = tuple(TINY + (["--model.activation-checkpointing"] if checkpointing else []))
    fake, real = planned(args), planned(args, fake=False)
    assert set(fake.memory) == set(real.memory) == set(PHASES)
    for phase in PHASES:
        for category, measured in real.memory[phase].items():
            assert fake.memory[phase].get(category, 0) == pytest.approx(measured, rel=0.01, abs=64 * 1024), (phase, category)


def test_plan_memory_equals_a_two_rank_gloo_run(tmp_path):
    """FSDP2 on 2 real gloo ranks (each rank's shards, its share of the prompts, the all-gathers'
    and reduce-scatters' buffers) against the plan's fake world of 2: rank 0's every phase and
    category agree, within the tolerance of the one-rank test."""
    out = tmp_path / "real.json"
    torchrun(2, "tests/plan_real_step.py", [str(out), *TINY], tmp_path)
    real, fake = json.loads(out.read_text()), planned(tuple(TINY), world_size=2)
    assert set(fake.memory) == set(real) == set(PHASES)
    for phase in PHASES:
        for category, measured in real[phase].items():
            assert fake.memory[phase].get(category, 0) == pytest.approx(measured, rel=0.01, abs=64 * 1024), (phase, category)
    assert real["update"][TOTAL] < planned(tuple(TINY)).memory["update"][TOTAL]  # the shards halve


def test_activation_checkpointing_and_micro_batch_move_the_plan():
    base = planned(tuple(TINY))
    ac = planned(tuple(TINY + ["--model.activation-checkpointing"]))
    smaller = planned(tuple(TINY + ["--grpo.micro-batch-size", "8"]))  # two groups per micro-batch
    act = {name: dict((p, c["activations"]) for p, c, _ in rows(r)) for name, r in [("base", base), ("ac", ac), ("mb8", smaller)]}
    assert act["ac"]["update"] < act["base"]["update"]
    assert act["mb8"]["update"] > act["base"]["update"]


def _tiny_shapes(rec_args: tuple[str, ...]) -> dict:
    """The tiny model's dimensions, as the plan built it (its vocabulary is the tokenizer's)."""
    cfg = parse(list(rec_args))
    m = cfg.model
    return {"hidden": m.tiny_hidden_size, "layers": m.tiny_layers, "heads": m.tiny_heads, "kv": max(1, m.tiny_heads // 2)}


def test_prefill_flops_match_the_analytic_count():
    """2 x (matmul parameters) x tokens for the layers, the LM head on each prompt's last token, and
    4 x heads x T^2 x head_dim per layer for attention."""
    rec = planned(tuple(TINY))
    d = _tiny_shapes(tuple(TINY))
    h, layers, heads, kv = d["hidden"], d["layers"], d["heads"], d["kv"]
    head_dim = h // heads
    layer_params = h * head_dim * (heads + 2 * kv) + heads * head_dim * h + 3 * h * (3 * h)  # q,k,v,o; gate,up,down
    vocab = rec.gathered_param_bytes // 4 // 1 - layers * layer_params  # fp32; the rest is the tied table and norms
    vocab = round(vocab / h)
    prompts, width = 2, 48
    expected = (2 * layer_params * layers * prompts * width + 2 * h * vocab * prompts
                + 4 * layers * prompts * heads * width * width * head_dim)
    flops, _ = rec.work["rollout: prefill"].total()
    assert flops == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("completion_tokens", [None, 4])
def test_decode_bytes_are_the_weights_and_the_kv_cache_per_token(completion_tokens):
    """Each decode step reads every matmul weight once and the keys and values written so far
    (completions to --rollout.max-new-tokens, or a typical length that stops early)."""
    rec = planned(tuple(TINY), completion_tokens=completion_tokens)
    d = _tiny_shapes(tuple(TINY))
    h, layers, heads, kv = d["hidden"], d["layers"], d["heads"], d["kv"]
    head_dim = h // heads
    work = rec.work["rollout: decode"]
    weights = rec.gathered_param_bytes - 4 * (2 * h * layers + h + 2 * head_dim * layers)  # less the norms
    steps, prompts, group, width = rec.decode_tokens, 2, 4, 48
    kv_read = sum(2 * layers * prompts * kv * (width + group * (t + 1)) * head_dim * 4 for t in range(steps))
    read = sum(work.total(kind)[1] for kind in ("matmul", "attention"))
    expected = steps * weights + kv_read
    assert expected <= read <= 1.15 * expected  # the rest: the decode rows' activations in and out


def test_a_typical_completion_length_shortens_the_rollout_and_the_update():
    """--plan.completion-tokens 4 of 16: every row samples a stop token as its 4th, the engine's own
    finished-rows check (every 8 steps) ends decoding after 8 tokens instead of 16, and the training
    passes are trimmed to 4 completion columns: less decode traffic and FLOPs, smaller log-prob and
    update activations, and the header says which length it assumed."""
    worst, typical = planned(tuple(TINY)), planned(tuple(TINY), completion_tokens=4)
    assert (worst.decode_tokens, typical.decode_tokens) == (15, 7)  # model calls: the last token needs none
    decode = {name: r.work["rollout: decode"].total() for name, r in [("worst", worst), ("typical", typical)]}
    assert decode["typical"][0] < 0.6 * decode["worst"][0] and decode["typical"][1] < 0.6 * decode["worst"][1]
    act = {name: dict((p, c["activations"]) for p, c, _ in rows(r)) for name, r in [("worst", worst), ("typical", typical)]}
    for phase in ("old / ref log-probs", "update"):
        assert act["typical"][phase] < act["worst"][phase], phase
    out = render("demo", parse(TINY), PlanConfig(world_size=1, completion_tokens=4), typical)
    assert "every completion has 4 tokens (--plan.completion-tokens" in out.splitlines()[1]
    assert "every completion runs to --rollout.max-new-tokens 16" in render("demo", parse(TINY), PlanConfig(world_size=1), worst)


def test_socialr1_4b_at_8_ranks():
    """The shipped Qwen3-4B config at 8 fake ranks, reduced (8 prompts, 128-token prompts, 4 new
    tokens) to keep CI short: every phase, a peak above the shards, and a table that says so."""
    small = ["socialr1-4b", "--rollout.max-new-tokens", "4", "--data.max-prompt-tokens", "128",
             "--rollout.prompts-per-step", "8", "--grpo.micro-batch-size", "5"]
    cfg, pc = parse(small), PlanConfig(gpu="a100-40gb", world_size=8)
    rec = planned(tuple(small), 8)
    out = render("socialr1-4b", cfg, pc, rec)
    for phase in PHASES:
        assert f"| {phase} |" in out
    assert "step >= " in out and "lower bound" in out and "| h200 |" in out
    arch = architecture(cfg, None)
    assert arch["hidden_size"] == 2560 and arch["num_hidden_layers"] == 36
    params = 4.02e9  # Qwen3-4B's parameter count (tied embeddings)
    assert rec.gathered_param_bytes == pytest.approx(params * 2, rel=0.01)  # bf16
    assert rec.sharded_param_bytes == pytest.approx(2 * params * 4 / 8, rel=0.01)  # policy and reference, fp32 shards
    assert max(m[TOTAL] for m in rec.memory.values()) > rec.sharded_param_bytes
    assert all(t.seconds > 0 for t in timings(rec, GPUS["a100-40gb"], 8) if t.phase != "reward")


def test_fit_search_finds_the_smallest_change(monkeypatch):
    """On a GPU just too small for the step's update, planning again with activation checkpointing
    (the smallest change against the update's peak) fits, and the search says so."""
    args = tuple(TINY)
    base, ac = planned(args), planned(tuple(TINY + ["--model.activation-checkpointing"]))
    between = (max(m[TOTAL] for m in base.memory.values()) + max(m[TOTAL] for m in ac.memory.values())) // 2
    monkeypatch.setitem(GPUS, "a100-40gb", dataclasses.replace(GPUS["a100-40gb"], memory=between))
    pc = PlanConfig(gpu="a100-40gb", world_size=1, headroom=0.0)
    cfg = parse(list(args))
    assert not fits(base, GPUS["a100-40gb"], 0.0)
    found = fit_search(cfg, base, pc, lambda c: record(c, pc))
    assert found is not None
    assert changed_flags(cfg, found[0]) == "--model.activation-checkpointing"

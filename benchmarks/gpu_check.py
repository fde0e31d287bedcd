"""One command for a GPU machine: the Triton kernels, the rollout and a real FSDP2 training run,
measured at Qwen3 shapes with random weights (no hub), judged in one verdict table.

    python benchmarks/gpu_check.py             # one CUDA GPU, under 10 minutes
    python benchmarks/gpu_check.py --dry-run   # CPU, tiny shapes: every part and check runs (CI runs this)

Parts, each in its own process (fresh GPU memory, its own time limit):
  kernels    parity of the Triton kernels (compiled for this GPU) against naive at Qwen3-4B shapes,
             then kernel_bench rows (naive, triton; N=4096, 16384) and their targets
  rollout    sampling on a Qwen3-4B-shaped random bf16 model: 64 prompts x 5, 512 new tokens,
             with our rollout engine (socialr1/rollout), compile off and on
  attention  training forward + backward on a Qwen3-1.7B-shaped model, SDPA against flash-attn
  gradients  the GRPO loss gradient of every parameter of a Qwen3-1.7B-shaped model, through the
             policy's fused kernels in bf16, against plain float32 logits on the same ragged batch
  train      `train.py`, 3 GRPO steps with FSDP2 on one GPU, Qwen3-1.7B-shaped random model (bf16,
             activation checkpointing, flash-attn when it imports, else SDPA): s/step, phases, peak
             memory; rewards that differ within groups, non-zero gradients, weights that moved
  plan       `--plan` (socialr1/plan, on the CPU) of the train part's run at world size 1 on this GPU's
             entry: its peak memory and s/step next to the train part's measured ones (information)

A random model never earns the task's reward, so every advantage would be 0 and nothing would
train. The train part gives it a reward it can earn: a tokenizer whose ids past the tiny BPE
vocabulary decode to `<fN>`, a stop string that a few of those hold (completions end at varied
lengths), and the sip formula's length window alone (additive mode; every other term is 0).

The process exits 1 if any part fails. Results go to --out-dir (default runs/gpu_check, git-ignored);
numbers and the machine go in benchmarks/RESULTS.md.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

Part = Literal["kernels", "rollout", "attention", "gradients", "train", "plan"]
PARTS: tuple[Part, ...] = ("kernels", "rollout", "attention", "gradients", "train", "plan")
# 595 s of GPU work: under 10 minutes; the plan, on the CPU, runs beside it.
LIMIT_S = {"kernels": 110, "rollout": 240, "attention": 45, "gradients": 60, "train": 140, "plan": 120}
CPU_PARTS = ("plan",)  # start with the first part and run beside the others; their limit counts from their turn
DRY_LIMIT_S = 240


@dataclass
class Config:
    dry_run: bool = False
    """CPU, tiny shapes, a few prompts: every part and check runs (a few minutes of CPU); the timings mean nothing."""
    parts: tuple[Part, ...] = PARTS
    """Which parts to run."""
    out_dir: Path = ROOT / "runs" / "gpu_check"
    """Where each part's rows, the train run and the verdict table (gpu_check.md) go (runs/ is git-ignored)."""
    part: Part | None = None
    """Internal: run only this part, in this process (the parent starts one process per part)."""


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int


QWEN3_4B = Shape(2560, 36, 32, 8, 128, 9728, 151936)
QWEN3_1_7B = Shape(2048, 28, 16, 8, 128, 6144, 151936)
TINY = Shape(64, 2, 4, 2, 16, 192, 1024)
TINY_TRAIN = Shape(64, 2, 4, 2, 16, 192, 4096)  # most ids past the tiny BPE vocabulary, as at Qwen3's 151936
SEED = 0  # train.py's --seed: the check rebuilds the run's initial weights from it


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the issue's sizes on a GPU, tiny ones for --dry-run."""

    model_4b: Shape
    model_1_7b: Shape
    parity_tokens: int
    sweep_tokens: tuple[int, ...]
    prompts: int
    group: int
    prompt_len: tuple[int, int]
    new_tokens: int
    train_rows: int
    train_len: int
    train_args: tuple[str, ...]


# The reward of the train part: the length window alone, over completions that a stop string ends
# at varied lengths (see the module doc); an lr at which 3 steps move bf16 weights visibly.
REWARD_ARGS = ("--reward.preset", "none", "--reward.formula", "sip", "--reward.mode", "additive", "--optim.lr", "1e-5")
# "77>" ends 1 in 100 filler tokens: lengths spread over 1..256 around the window [64, 192].
GPU = Sizes(QWEN3_4B, QWEN3_1_7B, 2048, (4096, 16384), 64, 5, (200, 400), 512, 8, 1024,
            ("--rollout.prompts-per-step", "32", "--rollout.max-new-tokens", "256", "--data.synthetic", "512",
             "--rollout.stop-strings", "77>", "--reward.len-min", "64", "--reward.len-max", "192", *REWARD_ARGS))
DRY = Sizes(TINY, TINY_TRAIN, 64, (128,), 4, 2, (8, 16), 8, 2, 32,
            ("--rollout.prompts-per-step", "2", "--rollout.group-size", "4", "--rollout.max-new-tokens", "24",
             "--data.synthetic", "32", "--device", "cpu",
             "--rollout.stop-strings", "7>", "--reward.len-min", "6", "--reward.len-max", "18", *REWARD_ARGS))


class Rows:
    """A part's verdict rows, written to disk as they come, so a part that runs out of time still
    shows what it measured."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def add(self, check: str, result: str, ok: bool | str) -> None:
        """ok: True / False (FAILED: the part is broken), or a verdict of its own ("info", "missed")."""
        verdict = ok if isinstance(ok, str) else "ok" if ok else "FAILED"
        self.rows.append({"check": check, "result": result, "verdict": verdict})
        self.path.write_text(json.dumps(self.rows, indent=1))
        print(f"  {check}: {result} [{verdict}]", flush=True)


# ---- models from configs ---------------------------------------------------------------------
def tokenizer():
    """The offline tokenizer of the tiny demo: a random model does not need Qwen's own."""
    from socialr1 import tiny
    from socialr1.prompts import user_message
    from socialr1.sip import SIPFormat
    from socialr1.synthetic import generate_items

    fmt = SIPFormat()
    items = generate_items(64, seed=0)
    corpus = [user_message(it, fmt) for it in items] + [fmt.render(it.gold_stages, it.answer_letter) for it in items]
    return tiny.build_tokenizer(corpus, 1000)


def save_tokenizer(directory: Path, vocab: int):
    """Saves the tiny tokenizer with its BPE vocabulary filled up to the model's: id N decodes to
    `<fN>` (vocabulary entries, not added tokens, so loading stays fast at 151936). Returns the
    tokenizer as built (its special ids are the saved one's)."""
    tok = tokenizer()
    tok.save_pretrained(directory)
    path = directory / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["model"]["vocab"].update({f"<f{i}>": i for i in range(len(tok), vocab)})
    path.write_text(json.dumps(spec))
    return tok


def qwen3_config(shape: Shape, pad_id: int, eos_id: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None,
    )


def random_model(shape: Shape, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(qwen3_config(shape, 0, 1), dtype=dtype, attn_implementation="sdpa")


# ---- parts -----------------------------------------------------------------------------------
def part_kernels(sizes: Sizes, rows: Rows, cuda: bool) -> None:
    import torch
    from kernel_bench import _run_one, target_checks

    from socialr1.kernels import grpo_loss, linear_logprobs

    device = "cuda" if cuda else "cpu"
    h, v, n = sizes.model_4b.hidden, sizes.model_4b.vocab, sizes.parity_tokens
    g = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(n, h, device=device, generator=g).bfloat16()
    weight = (torch.randn(v, h, device=device, generator=g) / h**0.5).bfloat16()
    targets = torch.randint(0, v, (n,), device=device, generator=g)
    advantages = torch.randn(1, device=device, generator=g)
    old = -5 + torch.randn(1, n, device=device, generator=g)
    ref = -5 + torch.randn(1, n, device=device, generator=g)

    def run(backend: str, dtype) -> list:
        x, w = hidden.to(dtype, copy=True).requires_grad_(), weight.to(dtype, copy=True).requires_grad_()
        with torch.no_grad():
            logp, entropy = linear_logprobs(x, w, targets, with_entropy=True, backend=backend)
        loss, _ = grpo_loss(x[None], w, targets[None], torch.ones(1, n, device=device), advantages, old, ref,
                            beta=0.04, backend=backend)
        loss.backward()
        return [t.detach().float() for t in (logp, entropy, loss, x.grad, w.grad)]

    exact = run("naive", torch.float32)  # the same bf16 inputs, computed in float32
    errors = {b: [((a - e).norm() / e.norm().clamp_min(1e-12)).item() for a, e in zip(run(b, torch.bfloat16), exact)]
              for b in ("naive", "triton")}
    names = ("logp", "entropy", "loss", "grad_hidden", "grad_weight")
    for name, naive, triton in zip(names, errors["naive"], errors["triton"]):
        # A broken kernel (e.g. a wrong tile size on this GPU) is off by O(1); bf16 rounding, where the
        # Triton backward also rounds dz to bf16 (RESULTS.md), stays within a few times naive bf16's.
        rows.add(f"kernels: triton {name} vs float32 (N={n}, H={h}, V={v})",
                 f"rel. error {triton:.2e} (naive bf16: {naive:.2e})", triton <= 3 * naive + 1e-3)

    results = []
    for mode in ("fwd", "fwd_bwd"):
        for tokens in sizes.sweep_tokens:
            for method in ("naive", "triton") if cuda else ("torch",):  # CPU: only that the sweep runs
                spec = dict(method=method, mode=mode, tokens=tokens, hidden=h, vocab=v, dtype="bf16",
                            seq_len=min(512, tokens), repeats=2)
                r = _run_one(spec, timeout_s=45)
                results.append(r)
                shown = r.get("error") or f"{r['time_s'] * 1e3:.1f} ms, peak {r['peak_mib']:.0f} MiB"
                rows.add(f"sweep: {mode} N={tokens} {method}", shown, "error" not in r)
    for line in target_checks(results, cuda):
        rows.add("sweep target", line, "missed" if "NOT met" in line else "info")


def _decode(model, prompts, group: int, new_tokens: int, engine, cuda: bool) -> dict:
    """One rollout through our engine (socialr1.rollout), timed."""
    import torch

    from socialr1.rollout import SamplingParams

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = engine.generate(model, prompts, group, SamplingParams(new_tokens, 1.0, stop_ids=(1,)), pad_id=0)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = int(out.mask.sum())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return dict(seconds=seconds, tokens=tokens, tokens_per_s=tokens / seconds, peak_gib=peak)


def part_rollout(sizes: Sizes, rows: Rows, cuda: bool) -> None:
    import random

    import torch

    from socialr1.rollout import Engine

    device = "cuda" if cuda else "cpu"
    model = random_model(sizes.model_4b, device, torch.bfloat16).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(2, sizes.model_4b.vocab) for _ in range(rng.randint(*sizes.prompt_len))]
               for _ in range(sizes.prompts)]
    what = f"{sizes.prompts} prompts x {sizes.group}, {sizes.new_tokens} new tokens"
    eager, compiled = Engine(), Engine(compile=True, log=lambda line: rows.add("rollout: compile", line, "info"))
    _decode(model, prompts[:2], 1, 4, eager, cuda=cuda)  # CUDA context, cuBLAS, allocator

    def report(label: str, r: dict) -> None:
        peak = f", peak {r['peak_gib']:.1f} GiB" if cuda else ""
        rows.add(f"rollout: {label}", f"{r['seconds']:.1f} s, {r['tokens_per_s']:.0f} tokens/s{peak} ({what})",
                 r["tokens"] > 0)

    report("compile off", _decode(model, prompts, sizes.group, sizes.new_tokens, eager, cuda=cuda))
    first = _decode(model, prompts, sizes.group, sizes.new_tokens, compiled, cuda=cuda)
    rows.add("rollout: compile on, first call", f"{first['seconds']:.1f} s including compilation", first["tokens"] > 0)
    report("compile on", _decode(model, prompts, sizes.group, sizes.new_tokens, compiled, cuda=cuda))


def part_attention(sizes: Sizes, rows: Rows, cuda: bool) -> None:
    import torch

    from socialr1.models import attention, flash_attn_error

    device = "cuda" if cuda else "cpu"
    model = random_model(sizes.model_1_7b, device, torch.bfloat16).train()
    n, t = sizes.train_rows, sizes.train_len
    ids = torch.randint(2, sizes.model_1_7b.vocab, (n, t), device=device)
    mask = (torch.arange(t, device=device) >= torch.randint(0, t // 2, (n, 1), device=device)).long()  # left padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)

    def step() -> None:
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        out.float().square().mean().backward()

    def timed(impl: str) -> float:
        with attention(model, impl):
            step()
            times = []
            for _ in range(3):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step()
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
        return statistics.median(times)

    what = f"forward + backward, {n} x {t} tokens, Qwen3-1.7B shape" if cuda else f"{n} x {t} tokens, tiny"
    sdpa = timed("sdpa")
    rows.add("train attention: sdpa", f"{sdpa * 1e3:.0f} ms ({what})", True)
    reason = flash_attn_error() if cuda else "needs CUDA"
    if reason:
        rows.add("train attention: flash-attn", f"not measured: {reason}", "info")
        return
    flash = timed("flash_attention_2")
    rows.add("train attention: flash-attn", f"{flash * 1e3:.0f} ms ({what})", True)
    faster = "flash_attention_2" if flash < sdpa else "sdpa"
    rows.add("train attention", f"faster: {faster}; --model.attn-implementation auto is flash_attention_2",
             "info" if faster == "flash_attention_2" else "change default")


def part_gradients(sizes: Sizes, rows: Rows, cuda: bool) -> None:
    """The gradient the training update applies, at the train part's model shape: the policy's GRPO
    loss (final hidden states into the fused log-prob kernels, bf16) against the same loss written
    out on plain float32 logits, for every parameter; bf16 naive logits show the rounding to allow."""
    import copy

    import torch

    from socialr1.policy import LossSettings, Policy
    from socialr1.rollout import Rollout, pad_left

    device = "cuda" if cuda else "cpu"
    shape, n, width = sizes.model_1_7b, 4, sizes.train_len // 4
    exact = random_model(shape, device, torch.float32).train()
    low = copy.deepcopy(exact).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, shape.vocab, (int(k),), generator=g).tolist() for k in torch.randint(width // 2, width, (n,), generator=g)]
    ends = torch.tensor([width, width // 3, width - 5, 1])  # ragged completions
    completion_mask = (torch.arange(width)[None] < ends[:, None]).long()
    completion_ids = torch.randint(2, shape.vocab, (n, width), generator=g).masked_fill(completion_mask == 0, 0)
    ids, mask = pad_left(prompts, 0)
    batch = Rollout(*(t.to(device) for t in (ids, mask, completion_ids, completion_mask, torch.arange(n))))
    advantages = torch.randn(n, generator=g).to(device)
    ref = (-12 + torch.randn(n, width, generator=g)).to(device) * completion_mask.to(device)  # KL term non-zero
    temperature = 0.7  # not 1: a gradient that forgets the temperature differs
    settings = LossSettings(0.04, 0.2, 0.2, "grpo", temperature, width)

    def naive(lm) -> torch.Tensor:
        """The loss from full logits: -A * ratio + beta * k3 KL per token, each row's mean, then the rows' mean."""
        am = batch.attention_mask
        logits = lm(input_ids=batch.input_ids, attention_mask=am, position_ids=(am.cumsum(1) - 1).clamp(min=0)).logits
        logits = logits[:, -width - 1 : -1].float() / temperature
        logp = logits.log_softmax(-1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
        delta = ref - logp
        per_token = -advantages[:, None] * torch.exp(logp - logp.detach()) + 0.04 * (delta.exp() - delta - 1)
        m = batch.completion_mask.float()
        return ((per_token * m).sum(1) / m.sum(1)).mean()

    def gradients(lm, loss_of) -> dict[str, torch.Tensor]:
        lm.zero_grad(set_to_none=True)
        loss_of(lm).backward()
        return {name: p.grad.float() for name, p in lm.named_parameters()}

    reference = gradients(exact, naive)
    rounded = gradients(low, naive)
    fused = gradients(low, lambda lm: Policy(lm).loss(batch, advantages, None, ref, settings)[0])

    def error(a: torch.Tensor, e: torch.Tensor) -> float:
        return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()

    errors = {name: (error(fused[name], e), error(rounded[name], e)) for name, e in reference.items()}
    worst = max(errors, key=lambda k: errors[k][0] / (3 * errors[k][1] + 1e-3))
    what = f"{len(errors)} parameters, {n} rows x {width} completion tokens, vocab {shape.vocab}"
    rows.add("gradients: nonzero reference", f"grad norm {torch.stack([e.norm() for e in reference.values()]).norm():.3e} ({what})",
             all(e.norm() > 0 for e in reference.values()))
    rows.add("gradients: policy (fused kernels, bf16) vs float32 logits",
             f"worst {worst}: rel. error {errors[worst][0]:.2e} (naive bf16 there: {errors[worst][1]:.2e})",
             all(f <= 3 * r + 1e-3 for f, r in errors.values()))


def weights_moved(model_dir: Path, final_dir: Path, device: str) -> tuple[int, int, float]:
    """(weight matrices changed, matrices, share of their elements changed) between the run's
    initial weights, rebuilt from its seed as train.py built them, and its final checkpoint."""
    import torch
    from safetensors.torch import load_file

    from socialr1.config import ModelConfig
    from socialr1.models import load_pretrained

    init, _ = load_pretrained(ModelConfig(name_or_path=str(model_dir), random_init=True), torch.device(device), SEED)
    final = {k: v for f in sorted(final_dir.glob("*.safetensors")) for k, v in load_file(f, device=device).items()}
    changed, elements, total = 0, 0, 0
    for name, p in init.named_parameters():
        if p.dim() == 2:
            diff = int((final[name] != p.detach().to(final[name].dtype)).sum())
            changed, elements, total = changed + (diff > 0), elements + diff, total + p.numel()
    return changed, sum(p.dim() == 2 for p in init.parameters()), elements / total


def train_run(sizes: Sizes, out: Path, model_folder: str = "qwen3-1.7b-shape") -> tuple[Path, Path, list[str]]:
    """The train part's model folder (config and tokenizer, no weights), run folder and train.py flags."""
    model_dir = out / model_folder
    tok = save_tokenizer(model_dir, sizes.model_1_7b.vocab)
    qwen3_config(sizes.model_1_7b, tok.pad_token_id, tok.eos_token_id).save_pretrained(model_dir)
    run_dir = out / "train-run"
    flags = ["socialr1-4b", "--model.name-or-path", str(model_dir),
             "--model.random-init", "--model.dtype", "bfloat16", "--model.activation-checkpointing", "--steps", "3",
             "--seed", str(SEED), "--save-every", "0", "--sample-every", "0", "--overwrite", "--output-dir", str(run_dir),
             *sizes.train_args]
    return model_dir, run_dir, flags


def part_train(sizes: Sizes, rows: Rows, cuda: bool, out: Path) -> None:
    import torch

    from socialr1.models import attn_implementation

    model_dir, run_dir, flags = train_run(sizes, out)
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *flags], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        rows.add("train.py", "exit {}: {}".format(done.returncode, (done.stderr.strip().splitlines() or [""])[-1][:300]), False)
        return
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    later = steps[1:] or steps  # the first step also warms up kernels and the allocator
    mean = {k: statistics.mean(s[k] for s in later) for k in later[0] if isinstance(later[0][k], (int, float))}
    attn = attn_implementation("auto", torch.device("cuda" if cuda else "cpu"))
    rows.add("train.py: 3 steps", f"{mean['time/step_s']:.1f} s/step (steps 2-3; first {steps[0]['time/step_s']:.1f} s), "
             f"FSDP2 on 1 {'GPU' if cuda else 'CPU rank'}, bf16, activation checkpointing, {attn}", len(steps) == 3)
    rows.add("train.py: phases", ", ".join(f"{k[5:-2]} {mean[k]:.1f} s" for k in
                                          ("time/generation_s", "time/reward_s", "time/logprobs_s", "time/update_s")), "info")
    if cuda:
        rows.add("train.py: peak memory", f"{max(s['memory/peak_gib'] for s in steps):.1f} GiB", "info")
    equal = [s["reward/zero_std_frac"] for s in steps]
    rows.add("train.py: rewards differ within groups", "groups with one reward: " + ", ".join(f"{f:.2f}" for f in equal)
             + f"; completion lengths {min(s['completion/length_min'] for s in steps):.0f}-"
             f"{max(s['completion/length_max'] for s in steps):.0f}", all(f < 1 for f in equal))
    finite = all(math.isfinite(s[k]) for s in steps for k in ("loss", "kl", "grad_norm"))
    flowing = all(s["grad_norm"] > 0 for s in steps)  # (the loss itself is ~0: group-centred advantages)
    rows.add("train.py: loss, KL, grad norm finite; grad norm non-zero",
             "grad norm " + ", ".join(f"{s['grad_norm']:.3g}" for s in steps), finite and flowing)
    changed, matrices, share = weights_moved(model_dir, run_dir / "final", "cuda" if cuda else "cpu")
    rows.add("train.py: weights moved", f"{changed} of {matrices} weight matrices changed, {share:.1%} of their elements",
             changed == matrices)


def plan_gpu(cuda: bool) -> str:
    """The plan's entry for this GPU: its family by name, then the nearest memory (H200 on a dry run)."""
    from socialr1.plan.config import GPUS

    if not cuda:
        return "h200"
    import torch

    name, memory = torch.cuda.get_device_name().lower(), torch.cuda.get_device_properties(0).total_memory
    family = [k for k in GPUS if k.split("-")[0] in name] or list(GPUS)
    return min(family, key=lambda k: abs(GPUS[k].memory - memory))


def part_plan(sizes: Sizes, rows: Rows, cuda: bool, out: Path) -> None:
    """The plan (socialr1/plan, on the CPU) of the train part's run, at world size 1: its peak memory
    and step time next to what the train part measured. Information, not a verdict: the first GPU
    run says how far off the plan is. The plan assumes the worst case (every prompt at
    --data.max-prompt-tokens, every completion at --rollout.max-new-tokens); the run's are shorter."""
    from socialr1.config import parse
    from socialr1.plan.config import GPUS, GiB, PlanConfig
    from socialr1.plan.report import peak, peak_phase, timings
    from socialr1.plan.run import record

    _, run_dir, flags = train_run(sizes, out, "plan-model")  # its own copy: the train part writes its own beside it
    cfg, pc = parse(flags), PlanConfig(gpu=plan_gpu(cuda), world_size=1)
    start = time.perf_counter()
    rec = record(cfg, pc)
    step_s = sum(t.seconds for t in timings(rec, GPUS[pc.gpu], 1))
    what = (f"1 x {pc.gpu}, prompts {cfg.data.max_prompt_tokens} and completions {cfg.rollout.max_new_tokens} tokens; "
            f"planned in {time.perf_counter() - start:.0f} s")
    sys.stdin.readline()  # the parent writes a line once the train part has finished (it started this part beside it)
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    later = steps[1:] or steps
    measured_peak = (f"measured {max(s['memory/peak_gib'] for s in steps):.1f} GiB" if steps and cuda
                     else "measured: needs CUDA" if steps else "measured: no train run")
    rows.add("plan vs train.py: peak memory", f"plan {peak(rec) / GiB:.3g} GiB ({peak_phase(rec)}); {measured_peak} ({what})", "info")
    measured_step = (f"measured {statistics.mean(s['time/step_s'] for s in later):.2f} s/step (steps 2-3), completions "
                     f"{statistics.mean(s['completion/length_mean'] for s in steps):.0f} tokens on average" if steps else "measured: no train run")
    rows.add("plan vs train.py: step time", f"plan >= {step_s:.3g} s/step (roofline lower bound); {measured_step}", "info")


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device: run with --dry-run on CPU")
    return torch.cuda.get_device_name()


# ---- driver ----------------------------------------------------------------------------------
def run_part(cfg: Config) -> None:
    cuda = not cfg.dry_run and bool(gpu_name())
    sizes = DRY if cfg.dry_run else GPU
    rows = Rows(cfg.out_dir / f"{cfg.part}.json")
    if cfg.part in ("train", "plan"):
        (part_train if cfg.part == "train" else part_plan)(sizes, rows, cuda, cfg.out_dir)
    else:
        parts = {"kernels": part_kernels, "rollout": part_rollout, "attention": part_attention, "gradients": part_gradients}
        parts[cfg.part](sizes, rows, cuda)


def start_part(cfg: Config, part: Part) -> subprocess.Popen:
    (cfg.out_dir / f"{part}.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--part", part, "--out-dir", str(cfg.out_dir)] + (["--dry-run"] if cfg.dry_run else [])
    # On CPU the parity check runs the Triton kernels in the interpreter (the other parts use the CPU
    # default kernels). The CPU-only plan takes one core, beside the GPU parts.
    env = (dict(os.environ, TRITON_INTERPRET="1") if cfg.dry_run and part == "kernels"
           else dict(os.environ, OMP_NUM_THREADS="1") if part in CPU_PARTS else None)
    with open(cfg.out_dir / f"{part}.stderr", "w") as stderr:  # a file, not a pipe: a part beside others is not read until its turn
        return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def finish_part(cfg: Config, part: Part, proc: subprocess.Popen) -> list[dict]:
    """Waits for a part (a line on its stdin says the parts before it have finished) and returns its rows."""
    limit = DRY_LIMIT_S if cfg.dry_run else LIMIT_S[part]
    try:
        proc.communicate("\n", timeout=limit)
        stderr = (cfg.out_dir / f"{part}.stderr").read_text()
        error = None if proc.returncode == 0 else (stderr.strip().splitlines() or ["killed"])[-1][:300]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        error = f"ran out of its {limit} s"
    path = cfg.out_dir / f"{part}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    if error:  # the plan is information (CI tests it): its failing is no verdict on the GPU path
        rows.append({"check": f"{part}: process", "result": error, "verdict": "info" if part in CPU_PARTS else "FAILED"})
    return [dict(part=part, **r) for r in rows]


def main(cfg: Config) -> None:
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    device = "CPU (dry run)" if cfg.dry_run else gpu_name()
    table = []
    started = time.perf_counter()
    early = {part: start_part(cfg, part) for part in cfg.parts if part in CPU_PARTS}  # alongside the GPU parts
    for part in cfg.parts:
        print(f"{part} ...", flush=True)
        table += finish_part(cfg, part, early.get(part) or start_part(cfg, part))
    wall = time.perf_counter() - started
    failed = [r for r in table if r["verdict"] == "FAILED"]
    lines = [f"gpu_check on {device}, {wall:.0f} s", "", "| part | check | result | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['check']} | {r['result']} | {r['verdict']} |" for r in table]
    lines += ["", f"{len(failed)} FAILED" if failed else "all checks passed"]
    (cfg.out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    (cfg.out_dir / "gpu_check.json").write_text(json.dumps(dict(device=device, wall_s=wall, config=asdict(cfg) | {
        "out_dir": str(cfg.out_dir)}, rows=table), indent=1))
    print("\n".join(lines))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    config = tyro.cli(Config)
    if config.part:
        run_part(config)
    else:
        main(config)

import os
import subprocess
import sys
from pathlib import Path

# Triton fixes at decoration time whether a @jit function (its own tl.sum, tl.max, ... included) is interpreted, and
# conftest imports transformers, which imports triton in compiled mode. So unless this process started with
# TRITON_INTERPRET=1, the triton cases are skipped here and run in a child pytest without conftest (last test).
if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from socialr1.kernels import chunked, grpo_loss, linear_logprobs, vocab_slabs  # noqa: E402
from socialr1.kernels.linear_logprobs import _impl, default_backend  # noqa: E402

TRITON = pytest.param("triton", marks=pytest.mark.skipif(not TRITON_IN_PROCESS, reason="runs in the child pytest"))
BACKENDS = ["naive", "torch", TRITON]
DTYPES = [torch.float32, torch.bfloat16]
N, H, V = 37, 48, 300  # none a multiple of the triton tiles (16, 64, 32) nor of the chunk rows


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # Forward: 16-row chunks, so the torch backend crosses chunk boundaries with a ragged last chunk. Backward: vocab
    # slabs of 128 float32 columns for N tokens (128, 128, 44 at V = 300), so grad_hidden sums over slabs.
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 16 * 4 * V)
    monkeypatch.setattr(vocab_slabs, "SLAB_BYTES", 128 * 4 * N)


def _inputs(dtype, n=N, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, H, generator=g) * scale).to(dtype)
    weight = (torch.randn(V, H, generator=g) / 5).to(dtype)
    targets = torch.randint(0, V, (n,), generator=g)
    return hidden, weight, targets


def _tol(dtype):
    # bf16 logits are rounded to bf16 by the naive/torch paths (as in HF + TRL); errors scale with |logit|.
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=6e-2, rtol=2e-2)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _grads(fn, hidden, weight):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    out = fn(h, w)  # (scalar, ...): differentiate the first entry
    return out, torch.autograd.grad(out[0], [h, w])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_linear_logprobs(backend, dtype, temperature):
    hidden, weight, targets = _inputs(dtype)
    upstream = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def run(backend, h, w):
        logp, entropy = linear_logprobs(h, w, targets, temperature, with_entropy=True, backend=backend)
        return (logp * upstream.to(logp.dtype)).sum(), logp, entropy

    (_, logp, entropy), (gh, gw) = _grads(lambda h, w: run(backend, h, w), hidden, weight)
    (_, ref_logp, ref_entropy), (ref_gh, ref_gw) = _grads(
        lambda h, w: run("naive", h, w), hidden.double(), weight.double())

    assert logp.dtype == torch.float32 and logp.shape == (N,)
    assert not entropy.requires_grad
    torch.testing.assert_close(logp.double(), ref_logp.detach(), **_tol(dtype))
    torch.testing.assert_close(entropy.double(), ref_entropy, **_tol(dtype))
    assert gh.dtype == dtype and gw.dtype == dtype
    max_err = 1e-5 if dtype == torch.float32 else 2e-2
    assert _rel_err(gh, ref_gh) < max_err
    assert _rel_err(gw, ref_gw) < max_err


@pytest.mark.parametrize("backend", BACKENDS)
def test_returns_logp_only_without_entropy(backend):
    hidden, weight, targets = _inputs(torch.float32)
    assert linear_logprobs(hidden, weight, targets, backend=backend).shape == (N,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend):
    # |logits| in the hundreds, and peaked rows whose target leads every other logit by hundreds.
    hidden, weight, targets = _inputs(torch.float32, scale=100.0)
    peaked = torch.arange(0, N, 3)
    hidden[peaked] = 500 * weight[targets[peaked]]

    def run(backend, h, w):
        logp, entropy = linear_logprobs(h, w, targets, with_entropy=True, backend=backend)
        return logp.sum(), logp, entropy

    (_, logp, entropy), (gh, gw) = _grads(lambda h, w: run(backend, h, w), hidden, weight)
    (_, ref_logp, ref_entropy), (ref_gh, ref_gw) = _grads(
        lambda h, w: run("naive", h, w), hidden.double(), weight.double())
    assert ref_logp.abs().max() > 100 and ref_entropy[peaked].max() < 1e-6
    for t in (logp, entropy, gh, gw):
        assert torch.isfinite(t).all()
    # float32 logits of magnitude ~1e3 carry ~1e-4 absolute rounding error.
    torch.testing.assert_close(logp.double(), ref_logp.detach(), atol=2e-3, rtol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, atol=2e-3, rtol=1e-3)
    assert logp[peaked].abs().max() < 1e-3
    assert _rel_err(gh, ref_gh) < 1e-4 and _rel_err(gw, ref_gw) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("cols", [64, 128, 512])  # 5 slabs (the last 44 wide), 3 slabs, one slab (no accumulator)
def test_backward_vocab_slabs(backend, cols, monkeypatch):
    item_bytes = _impl(backend).block_item_bytes(torch.bfloat16)
    monkeypatch.setattr(vocab_slabs, "SLAB_BYTES", cols * item_bytes * N)
    assert vocab_slabs.slab_columns(N, V, item_bytes) == min(cols, V)
    hidden, weight, targets = _inputs(torch.bfloat16)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(2))

    def run(backend, h, w):
        return ((linear_logprobs(h, w, targets, 0.7, backend=backend) * upstream.to(h.dtype)).sum(),)

    _, (gh, gw) = _grads(lambda h, w: run(backend, h, w), hidden, weight)
    _, (ref_gh, ref_gw) = _grads(lambda h, w: run("naive", h, w), hidden.double(), weight.double())
    assert gh.dtype == gw.dtype == torch.bfloat16
    assert _rel_err(gh, ref_gh) < 1e-2 and _rel_err(gw, ref_gw) < 1e-2


def test_default_backend(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert default_backend(torch.device("cpu")) == "torch"
    assert default_backend(torch.device("cuda")) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert default_backend(torch.device("cpu")) == "triton"


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_tied_lm_head(backend):
    # Qwen3-4B: the LM head is the input embedding, so weight gets gradient from both uses.
    _, weight, targets = _inputs(torch.float32)
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(3))

    def embedding_grad(backend, emb):
        emb = emb.clone().requires_grad_()
        linear_logprobs(torch.tanh(emb[ids]), emb, targets, backend=backend).sum().backward()
        return emb.grad

    assert _rel_err(embedding_grad(backend, weight), embedding_grad("naive", weight.double())) < 1e-5


# ---------------------------------------------------------------- grpo_loss

B, T = 4, 9  # 36 tokens; row 2 fully masked, row 0 fully active


def _trl_reference(hidden, weight, targets, mask, adv, old_logp, ref_logp, beta, eps_low, eps_high, loss_type,
                   temperature, max_completion_length):
    """TRL GRPOTrainer._compute_loss on full [B, T, V] float64 logits."""
    logprobs = (hidden @ weight.T / temperature).log_softmax(-1)
    logp = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    old_logp = logp.detach() if old_logp is None else old_logp
    coef_1 = torch.exp(logp - old_logp)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    a = adv[:, None]
    per_token = -torch.min(coef_1 * a, coef_2 * a)
    kl = torch.zeros_like(logp)
    if beta != 0.0:
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        per_token = per_token + beta * kl
    m = mask.double()
    if loss_type == "grpo":
        loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dr_grpo":
        loss = (per_token * m).sum() / (B * (max_completion_length or T))
    else:
        loss = (per_token * m).sum() / m.sum().clamp(min=1.0)
    low = ((coef_1 < 1 - eps_low) & (a < 0)).double()
    high = ((coef_1 > 1 + eps_high) & (a > 0)).double()

    def masked_mean(x):
        return (x * m).sum() / m.sum()

    stats = dict(kl=masked_mean(kl), clip_ratio_low=masked_mean(low), clip_ratio_high=masked_mean(high),
                 clip_ratio=masked_mean(torch.maximum(low, high)), entropy=masked_mean(entropy))
    return loss, stats


def _grpo_inputs(dtype, temperature=1.0):
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(B, T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / 5).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0], mask[2] = True, False
    advantages = torch.tensor([0.7, -1.2, 0.3, -0.4])
    with torch.no_grad():
        logp = linear_logprobs(hidden.double().reshape(-1, H), weight.double(), targets.reshape(-1), temperature,
                               backend="naive").reshape(B, T)
    # Perturbed log-probs so that both clip sides and the KL term are exercised.
    old_logp = logp + 0.4 * torch.randn(B, T, dtype=torch.float64, generator=g)
    ref_logp = logp + 0.5 * torch.randn(B, T, dtype=torch.float64, generator=g)
    return hidden, weight, targets, mask, advantages, old_logp, ref_logp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("with_old", [False, True])
def test_grpo_loss(backend, loss_type, beta, with_old):
    hidden, weight, targets, mask, adv, old_logp, ref_logp = _grpo_inputs(torch.float32, temperature=0.8)
    old_logp = old_logp if with_old else None
    kwargs = dict(beta=beta, eps_low=0.2, eps_high=0.28, loss_type=loss_type, temperature=0.8,
                  max_completion_length=12)
    old_f32 = None if old_logp is None else old_logp.float()
    (loss, stats), (gh, gw) = _grads(
        lambda h, w: grpo_loss(h, w, targets, mask, adv, old_f32, ref_logp.float(), backend=backend, **kwargs),
        hidden, weight)
    (ref_loss, ref_stats), (ref_gh, ref_gw) = _grads(
        lambda h, w: _trl_reference(h, w, targets, mask, adv.double(), old_logp, ref_logp, **kwargs),
        hidden.double(), weight.double())
    torch.testing.assert_close(loss.double(), ref_loss.detach(), atol=1e-5, rtol=1e-4)
    for key, value in ref_stats.items():
        torch.testing.assert_close(torch.as_tensor(stats[key]).double(), value.detach(), atol=1e-5, rtol=1e-4)
    if with_old:
        assert ref_stats["clip_ratio_low"] > 0 and ref_stats["clip_ratio_high"] > 0
    assert _rel_err(gh, ref_gh) < 1e-5 and _rel_err(gw, ref_gw) < 1e-5
    assert (gh[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_bf16(backend):
    hidden, weight, targets, mask, adv, old_logp, ref_logp = _grpo_inputs(torch.bfloat16)
    kwargs = dict(beta=0.04, eps_low=0.2, eps_high=0.2, loss_type="grpo", temperature=1.0,
                  max_completion_length=None)
    (loss, _), (gh, gw) = _grads(
        lambda h, w: grpo_loss(h, w, targets, mask, adv, old_logp.float(), ref_logp.float(), backend=backend,
                               **kwargs), hidden, weight)
    (ref_loss, _), (ref_gh, ref_gw) = _grads(
        lambda h, w: _trl_reference(h, w, targets, mask, adv.double(), old_logp, ref_logp, **kwargs),
        hidden.double(), weight.double())
    assert gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref_loss.detach(), atol=2e-2, rtol=2e-2)
    assert _rel_err(gh, ref_gh) < 5e-2 and _rel_err(gw, ref_gw) < 5e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_tokens_contribute_nothing(backend):
    hidden, weight, targets, mask, adv, old_logp, ref_logp = _grpo_inputs(torch.float32)
    # Garbage (even inf) in the masked slots must not leak into the loss or the gradients.
    garbage_old = old_logp.float().masked_fill(~mask, float("inf"))
    garbage_ref = ref_logp.float().masked_fill(~mask, float("-inf"))
    garbage_targets = targets.masked_fill(~mask, 0)
    garbage_hidden = hidden.masked_fill(~mask[..., None], 1e6)
    (loss, stats), (gh, gw) = _grads(
        lambda h, w: grpo_loss(h, w, garbage_targets, mask, adv, garbage_old, garbage_ref, backend=backend),
        garbage_hidden, weight)
    (ref_loss, _), (_, ref_gw) = _grads(
        lambda h, w: grpo_loss(h, w, targets, mask, adv, old_logp.float(), ref_logp.float(), backend=backend),
        hidden, weight)
    assert torch.isfinite(loss) and all(torch.isfinite(torch.as_tensor(v)) for v in stats.values())
    torch.testing.assert_close(loss, ref_loss)
    assert (gh[~mask] == 0).all()
    torch.testing.assert_close(gw, ref_gw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_all_masked(backend):
    hidden, weight, targets, _, adv, _, _ = _grpo_inputs(torch.float32)
    mask = torch.zeros(B, T, dtype=torch.bool)
    (loss, stats), (gh, gw) = _grads(lambda h, w: grpo_loss(h, w, targets, mask, adv, backend=backend), hidden, weight)
    assert loss.item() == 0.0 and stats["entropy"].item() == 0.0
    assert (gh == 0).all() and (gw == 0).all()


def test_constants_get_no_gradient():
    hidden, weight, targets, mask, adv, old_logp, ref_logp = _grpo_inputs(torch.float32)
    consts = [adv.requires_grad_(), old_logp.float().requires_grad_(), ref_logp.float().requires_grad_()]
    h = hidden.requires_grad_()
    loss, _ = grpo_loss(h, weight, targets, mask, consts[0], consts[1], consts[2], backend="torch")
    loss.backward()
    assert h.grad is not None and all(c.grad is None for c in consts)


def _nvidia_tools() -> Path:
    """Where the Triton wheel keeps its CUDA binaries (ptxas, cuobjdump)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def _compile_for_gpu(kernel, arch: int, dtype: str, constexprs: dict) -> tuple[int, int, str]:
    """Compiles a @triton.jit kernel for sm_<arch> without a GPU, as a launch on Qwen3 shapes would (pointers and the
    hidden size divisible by 16). Returns (registers per thread, stack bytes = spills, PTX)."""
    import re
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    options = {key: constexprs.pop(key) for key in ("num_warps", "enable_fp_fusion")}
    pointee = {"h_ptr": dtype, "w_ptr": dtype, "dz_ptr": dtype, "tgt_ptr": "i64"}
    signature = {name: "constexpr" if name in constexprs else "fp32" if name == "inv_temp"
                 else "*" + pointee.get(name, "fp32") if name.endswith("_ptr") else "i32" for name in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if name.endswith("_ptr") or name in ("H", "stride_hn", "stride_wv")}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, aligned), target=GPUTarget("cuda", arch, 32),
                              options=options)
    cuobjdump = _nvidia_tools() / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return int(regs), int(stack), compiled.asm["ptx"]


@pytest.mark.skipif(TRITON_IN_PROCESS, reason="needs Triton's compiler, not its interpreter")
@pytest.mark.parametrize("arch,mma", [(80, "mma.sync"), (90, "wgmma")], ids=["A100-sm80", "H100-sm90"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_triton_kernels_compile_for_gpus(arch, mma, dtype):
    """What a CPU can check of the GPU build: both kernels compile for A100 and H100 with the shipped launch config,
    spill no registers to local memory, and run their 16-bit tiles on tensor cores."""
    tools = _nvidia_tools()
    if not ((tools / "ptxas").exists() and (tools / "cuobjdump").exists()):
        pytest.skip(f"this Triton wheel has no ptxas / cuobjdump in {tools}")
    from socialr1.kernels import triton_logprobs

    config = triton_logprobs.launch_config(torch.bfloat16 if dtype == "bf16" else torch.float32)
    kernels = [(triton_logprobs._grad_logits_kernel, config)] + [
        (triton_logprobs._forward_kernel, dict(config, WITH_ENTROPY=entropy)) for entropy in (False, True)]
    for kernel, constexprs in kernels:
        regs, stack, ptx = _compile_for_gpu(kernel, arch, dtype, constexprs)
        assert stack == 0, f"{kernel.__name__} spills {stack} bytes ({regs} registers)"
        if dtype == "bf16":
            assert mma in ptx, f"{kernel.__name__}: no {mma} in the PTX"


@pytest.mark.skipif(TRITON_IN_PROCESS, reason="the triton cases ran in this process")
def test_triton_cases_in_interpreter_subprocess():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "--noconftest", "-p", "no:cacheprovider", "-k", "triton"],
        env=dict(os.environ, TRITON_INTERPRET="1"), cwd=root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1], proc.stdout[-500:]

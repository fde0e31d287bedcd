"""`triton` backend: Cut-Cross-Entropy-style kernels over [BLOCK_N, BLOCK_V] logit tiles that never leave the chip.

forward : grid (token tiles, vocab splits); each program streams its vocab range with an online log-sum-exp and
          writes 4 partial scalars per token, merged in PyTorch (O(N * splits) floats).
backward: kernels/vocab_slabs.py walks vocab slabs; for each, `_grad_logits_kernel` (grid: token tiles x vocab tiles of
          the slab) recomputes its logit tile and writes g * (onehot - softmax) in the input dtype, and two GEMMs
          turn that into grad_weight and grad_hidden: no atomics, so the result is deterministic.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Tile sizes. The interpreter runs each program as numpy ops, so it gets small tiles that test ragged edges.
BLOCK_N, BLOCK_V, BLOCK_H = (16, 64, 32) if INTERPRET else (64, 128, 64)
# With these tiles, 4 warps spill registers in the sm_80 forward; 8 spill in neither kernel on sm_80 or sm_90
# (checked by compiling for both without a GPU: tests/test_kernels.py::test_triton_kernels_compile_for_gpus).
NUM_WARPS = 8


@triton.jit
def _logits_tile(
    h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_wv, inv_temp,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """z: [BLOCK_N, BLOCK_V] float32 = hidden[offs_n] @ weight[offs_v].T / temperature."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_H):
        offs_k = k0 + tl.arange(0, BLOCK_H)
        k_mask = offs_k < H
        h = tl.load(h_ptr + offs_n[:, None] * stride_hn + offs_k[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_H]
        w = tl.load(w_ptr + offs_v[None, :] * stride_wv + offs_k[:, None],
                    mask=v_mask[None, :] & k_mask[:, None], other=0.0)  # [BLOCK_H, BLOCK_V]
        if UPCAST:  # the interpreter stores bf16 as raw uint16 and its dot would multiply the bit patterns
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=DOT_PRECISION)
    return acc * inv_temp


@triton.jit
def _forward_kernel(
    h_ptr, w_ptr, tgt_ptr, max_ptr, sum_ptr, ez_ptr, tz_ptr,  # partials: [splits, N] float32
    N, V, H, stride_hn, stride_wv, inv_temp, v_per_split,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    tgt = tl.load(tgt_ptr + offs_n, mask=n_mask, other=-1).to(tl.int32)  # 32-bit lanes for the tile compare
    run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_N,), tl.float32)  # sum exp(z - run_max)
    # sum exp(z - run_max) * (z - run_max): shifted so the entropy needs no lse - E[z] cancellation at |z| >> 1.
    run_ez = tl.zeros((BLOCK_N,), tl.float32)
    tgt_z = tl.zeros((BLOCK_N,), tl.float32)
    v_start = split * v_per_split
    for v0 in range(v_start, tl.minimum(v_start + v_per_split, V), BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_wv, inv_temp,
                         BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
        z = tl.where(v_mask[None, :], z, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(z, 1))  # finite: every tile holds at least one real column
        alpha = tl.exp(run_max - new_max)
        p = tl.exp(z - new_max[:, None])
        if WITH_ENTROPY:
            shift = tl.where(run_sum > 0, run_max - new_max, 0.0) * run_sum  # first tile: avoid -inf * 0
            run_ez = alpha * (run_ez + shift) + tl.sum(p * tl.where(v_mask[None, :], z - new_max[:, None], 0.0), 1)
        run_sum = run_sum * alpha + tl.sum(p, 1)
        tgt_z += tl.sum(tl.where(offs_v[None, :] == tgt[:, None], z, 0.0), 1)
        run_max = new_max
    out = split * N + offs_n
    tl.store(max_ptr + out, run_max, mask=n_mask)
    tl.store(sum_ptr + out, run_sum, mask=n_mask)
    tl.store(tz_ptr + out, tgt_z, mask=n_mask)
    if WITH_ENTROPY:
        tl.store(ez_ptr + out, run_ez, mask=n_mask)


@triton.jit
def _grad_logits_kernel(
    h_ptr, w_ptr, tgt_ptr, lse_ptr, scale_ptr, dz_ptr,  # w: one vocab slab [V, H]; dz: [N, V], contiguous
    N, V, H, stride_hn, stride_wv, inv_temp,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    n_mask = offs_n < N
    v_mask = offs_v < V
    g = tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)
    dz = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    # Tiles whose tokens all have zero gradient (zero advantage and no KL) skip the recompute: their dz is exactly 0.
    if tl.max(tl.abs(g), 0) > 0:
        z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_mask, v_mask, H, stride_hn, stride_wv, inv_temp,
                         BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, DOT_PRECISION)
        lse = tl.load(lse_ptr + offs_n, mask=n_mask, other=0.0)
        tgt = tl.load(tgt_ptr + offs_n, mask=n_mask, other=-1).to(tl.int32)  # 32-bit lanes for the tile compare
        onehot = tl.where(offs_v[None, :] == tgt[:, None], 1.0, 0.0)
        dz = g[:, None] * (onehot - tl.exp(z - lse[:, None]))  # [BLOCK_N, BLOCK_V]
    tl.store(dz_ptr + offs_n[:, None] * V + offs_v[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=n_mask[:, None] & v_mask[None, :])


def launch_config(dtype: torch.dtype) -> dict:
    """Constexprs and launch options shared by both kernels, for inputs of `dtype`."""
    return dict(
        BLOCK_N=BLOCK_N, BLOCK_V=BLOCK_V, UPCAST=INTERPRET,
        # float32 dots run on CUDA cores from registers: a 64-deep step spills on sm_80, a 32-deep one does not.
        BLOCK_H=BLOCK_H // 2 if dtype == torch.float32 and not INTERPRET else BLOCK_H,
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",  # tf32 is ignored for 16-bit inputs
        num_warps=NUM_WARPS,
        enable_fp_fusion=True,  # fused multiply-adds, Triton's default until 3.9; stated so 3.9 does not warn
    )


def _launch_args(hidden: torch.Tensor, weight: torch.Tensor) -> dict:
    assert hidden.stride(-1) == 1 and weight.stride(-1) == 1, "hidden and weight need a unit last-dim stride"
    return launch_config(hidden.dtype)


def _num_splits(n: int, vocab: int, device: torch.device) -> int:
    """Split the vocabulary so that small token counts still fill the GPU (about 4 programs per SM)."""
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(vocab, BLOCK_V), target // max(1, triton.cdiv(n, BLOCK_N))))


def forward(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N]
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns logp: [N], lse: [N] (of the temperature-scaled logits), entropy: [N] or None; all float32."""
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    (n, h), vocab = hidden.shape, weight.shape[0]
    splits = _num_splits(n, vocab, hidden.device)
    v_per_split = triton.cdiv(triton.cdiv(vocab, splits), BLOCK_V) * BLOCK_V
    splits = triton.cdiv(vocab, v_per_split)  # no empty split
    part_max, part_sum, part_ez, part_tz = torch.empty(4, splits, n, device=hidden.device, dtype=torch.float32)
    if n > 0:
        _forward_kernel[(triton.cdiv(n, BLOCK_N), splits)](
            hidden, weight, targets, part_max, part_sum, part_ez, part_tz,
            n, vocab, h, hidden.stride(0), weight.stride(0), 1.0 / temperature, v_per_split,
            WITH_ENTROPY=with_entropy, **_launch_args(hidden, weight),
        )
    row_max = part_max.max(0).values  # [N]
    scale = torch.exp(part_max - row_max)  # [splits, N]
    total = (part_sum * scale).sum(0)  # [N] = sum_v exp(z_v - row_max)
    lse = row_max + torch.log(total)
    logp = part_tz.sum(0) - lse
    entropy = None
    if with_entropy:
        # entropy = log(total) - sum_v exp(z_v - row_max) * (z_v - row_max) / total
        shifted_ez = (scale * (part_ez + (part_max - row_max) * part_sum)).sum(0)
        entropy = torch.log(total) - shifted_ez / total
    return logp, lse, entropy


def block_item_bytes(dtype: torch.dtype) -> int:
    """grad_logits writes only dz, in the input dtype: the float32 logit tiles stay on chip."""
    return dtype.itemsize


def grad_logits(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [cols, H]: one vocab slab
    targets: torch.Tensor,  # [N], relative to the slab
    lse: torch.Tensor,  # [N]
    scale: torch.Tensor,  # [N]
    temperature: float,
) -> torch.Tensor:
    """dz: [N, cols] = scale * (onehot - softmax) in hidden.dtype; the float32 logit tiles never leave the chip."""
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    (n, h), cols = hidden.shape, weight.shape[0]
    dz = torch.empty(n, cols, device=hidden.device, dtype=hidden.dtype)
    if n > 0:
        _grad_logits_kernel[(triton.cdiv(n, BLOCK_N), triton.cdiv(cols, BLOCK_V))](
            hidden, weight, targets, lse.contiguous(), scale.contiguous(), dz,
            n, cols, h, hidden.stride(0), weight.stride(0), 1.0 / temperature, **_launch_args(hidden, weight),
        )
    return dz

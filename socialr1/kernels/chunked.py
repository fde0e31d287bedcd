"""`torch` backend in plain PyTorch: the forward takes row chunks of the logits, never more than CHUNK_BYTES of
[rows, V] float32 alive at once; the backward (kernels/vocab_slabs.py) takes vocab slabs through `grad_logits`."""

import torch

# Bytes of one [rows, V] float32 logits chunk; up to about three such buffers are alive at once. 128 MiB is ~220 rows at
# V = 151,936: enough rows that the GEMM runs at full speed.
CHUNK_BYTES = 128 * 2**20


def _rows_per_chunk(vocab: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab))


def _logits(h: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    # Matmul in the input dtype (GEMMs accumulate in float32 internally), epilogue in at least float32.
    logits = (h @ weight.T).to(torch.promote_types(h.dtype, torch.float32))  # [rows, V]
    return logits.div_(temperature) if temperature != 1.0 else logits


def forward(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N]
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns logp: [N], lse: [N] (of the temperature-scaled logits, saved for backward), entropy: [N] or None."""
    n = hidden.shape[0]
    acc_dtype = torch.promote_types(hidden.dtype, torch.float32)
    logp = hidden.new_empty(n, dtype=acc_dtype)
    lse = hidden.new_empty(n, dtype=acc_dtype)
    entropy = hidden.new_empty(n, dtype=acc_dtype) if with_entropy else None
    step = _rows_per_chunk(weight.shape[0])
    with torch.no_grad():
        for s in range(0, n, step):
            z = _logits(hidden[s : s + step], weight, temperature)  # [rows, V]
            row_max = z.amax(-1, keepdim=True)  # [rows, 1]
            shifted = z.sub_(row_max)  # in place: z - max <= 0
            p = shifted.exp()  # [rows, V], unnormalised; the only exp pass over the chunk
            log_total = p.sum(-1).log()  # [rows]
            lse[s : s + step] = row_max.squeeze(-1) + log_total
            logp[s : s + step] = shifted.gather(-1, targets[s : s + step, None]).squeeze(-1) - log_total
            if with_entropy:
                # H = log(total) - sum_v p_v (z_v - max) / total, all terms O(1): no lse - E[z] cancellation.
                entropy[s : s + step] = log_total - p.mul_(shifted).sum(-1) / log_total.exp()
    return logp, lse, entropy


def block_item_bytes(dtype: torch.dtype) -> int:
    """grad_logits holds its slab as float32 (or float64) logits."""
    return torch.promote_types(dtype, torch.float32).itemsize


def grad_logits(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [cols, H]: one vocab slab
    targets: torch.Tensor,  # [N], relative to the slab: outside [0, cols) for tokens whose target lies elsewhere
    lse: torch.Tensor,  # [N]
    scale: torch.Tensor,  # [N]
    temperature: float,
) -> torch.Tensor:
    """dz: [N, cols] = scale * (onehot - softmax) in hidden.dtype, computed in place in the float32 logits block."""
    cols = weight.shape[0]
    inside = (targets >= 0) & (targets < cols)  # [N]
    g = scale[:, None]  # [N, 1]
    dz = _logits(hidden, weight, temperature).sub_(lse[:, None]).exp_().mul_(-g)
    dz.scatter_add_(-1, targets.clamp(0, cols - 1)[:, None], g * inside[:, None])
    return dz.to(hidden.dtype)

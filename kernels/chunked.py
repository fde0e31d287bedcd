"""`torch` backend: row chunks of the logits, never more than CHUNK_BYTES of [rows, V] float32 alive at once."""

import torch

# Bytes of one [rows, V] float32 logits chunk; about three such buffers are alive at once. Backward adds an O(V * H)
# float32 accumulation per chunk, so chunks must not be too small either: 128 MiB is ~220 rows at V = 151,936.
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


def backward(
    hidden: torch.Tensor,  # [N, H]
    weight: torch.Tensor,  # [V, H]
    targets: torch.Tensor,  # [N]
    lse: torch.Tensor,  # [N]
    grad_logp: torch.Tensor,  # [N]
    temperature: float,
    need_hidden: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """d logp_n / d z_nv = onehot - softmax, and z = hidden @ weight.T / temperature."""
    n = hidden.shape[0]
    step = _rows_per_chunk(weight.shape[0])
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    # Across chunks, grad_weight accumulates in float32 even for bf16 weights (one chunk: the GEMM already does).
    acc_dtype = torch.promote_types(weight.dtype, torch.float32) if n > step else weight.dtype
    grad_weight = torch.zeros_like(weight, dtype=acc_dtype) if need_weight else None
    scale = grad_logp.to(lse.dtype) / temperature  # [N]
    with torch.no_grad():
        for s in range(0, n, step):
            h = hidden[s : s + step]
            z = _logits(h, weight, temperature)  # [rows, V]
            g = scale[s : s + step, None]  # [rows, 1]
            # dz = g * (onehot - softmax), computed in place in the logits buffer.
            dz = z.sub_(lse[s : s + step, None]).exp_().mul_(-g)
            dz.scatter_add_(-1, targets[s : s + step, None], g)
            dz = dz.to(hidden.dtype)
            if need_hidden:
                torch.mm(dz, weight, out=grad_hidden[s : s + step])
            if need_weight:
                _accumulate_grad_weight(grad_weight, dz, h)
    if need_weight:
        grad_weight = grad_weight.to(weight.dtype)
    return grad_hidden, grad_weight


def _accumulate_grad_weight(
    grad_weight: torch.Tensor,  # [V, H] accumulator
    dz: torch.Tensor,  # [rows, V]
    h: torch.Tensor,  # [rows, H]
) -> None:
    if dz.dtype == grad_weight.dtype:
        grad_weight.addmm_(dz.T, h)
        return
    # Mixed dtypes cannot addmm_: go through vocab slices so the 16-bit product temporary stays small.
    rows_v = max(1, CHUNK_BYTES // (4 * h.shape[1]))
    for v in range(0, grad_weight.shape[0], rows_v):
        grad_weight[v : v + rows_v].add_(dz[:, v : v + rows_v].T @ h)

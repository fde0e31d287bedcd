"""Time and memory of the LM-head log-prob / GRPO-loss paths over a sweep of token counts.

    python benchmarks/kernel_bench.py              # CPU: H=512, V=151936, a few minutes
    python benchmarks/kernel_bench.py --full       # Qwen3-4B (H=2560) on CPU; on GPU both 4B and 8B always

Methods: naive (full logits), torch (chunked PyTorch), triton (CUDA only), compile (torch.compile of naive) and Liger's
LigerFusedLinearGRPOLoss if `liger_kernel` imports (forward+backward only: it has no forward-only log-prob op).
Modes: fwd = no-grad per-token log-probs (old/ref policy pass); fwd_bwd = grpo_loss forward + backward.
After the table it prints the kernel issue's targets (speed, peak and workspace growth) judged on the rows it measured.

Every measurement runs in a fresh subprocess. Memory: on GPU, torch.cuda.max_memory_allocated() minus the memory
allocated before the op. On CPU, a thread samples the process RSS (/proc/self/statm) every millisecond during one
call, minus the RSS just before it; the worker runs with a fixed glibc mmap threshold so that freed tensors go back
to the OS and RSS follows live tensors. (ru_maxrss is not used: it cannot be reset, and building the inputs or a
torch.compile warm-up already raises it above the op's own peak.) workspace = peak - outputs - gradients (inputs are
in the baseline).
"""

import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import tyro

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("naive", "torch", "triton", "compile", "liger")
MiB = 2**20


@dataclass
class Config:
    tokens: tuple[int, ...] | None = None
    """Token counts N to sweep (default: 256 1024 on CPU, 1024 4096 8192 16384 on GPU)."""
    hidden: tuple[int, ...] | None = None
    """Hidden sizes H (default: 512 on CPU, or 2560 with --full; 2560 and 4096, Qwen3-4B/8B, on GPU)."""
    vocab: int = 151936
    """Vocabulary size V (Qwen3)."""
    full: bool = False
    """On CPU, use the Qwen3-4B hidden size instead of the fast default."""
    dtype: Literal["bf16", "fp32"] = "bf16"
    """Dtype of hidden states and LM head."""
    methods: tuple[str, ...] = METHODS
    """Subset of naive, torch, triton, compile, liger."""
    modes: tuple[Literal["fwd", "fwd_bwd"], ...] = ("fwd", "fwd_bwd")
    """fwd: no-grad log-probs; fwd_bwd: GRPO loss forward and backward."""
    seq_len: int = 512
    """Tokens per sequence; B = N / seq_len sequences."""
    repeats: int = 2
    """Timed calls per measurement (the median is reported), after one untimed memory-measuring call."""
    timeout_s: float = 900.0
    """Per-measurement subprocess timeout."""
    out_dir: Path = ROOT / "benchmarks" / "results"
    """Where kernel_bench_H{H}.json and .png go."""


class _RssSampler:
    """Peak RSS of this process while active, sampled every millisecond by a thread (torch ops drop the GIL)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(1e-3):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(spec: dict) -> dict:
    """Runs in a fresh process: one warm-up/memory call, then `repeats` timed calls."""
    import torch

    sys.path.insert(0, str(ROOT))
    from socialr1.kernels import grpo_loss, linear_logprobs
    from socialr1.kernels.reference import naive_linear_logprobs

    method, mode, n, h, v = spec["method"], spec["mode"], spec["tokens"], spec["hidden"], spec["vocab"]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    batch, length = max(1, n // spec["seq_len"]), min(n, spec["seq_len"])
    g = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(batch, length, h, device=device, dtype=dtype, generator=g)
    weight = (torch.randn(v, h, device=device, generator=g) / h**0.5).to(dtype)
    targets = torch.randint(0, v, (batch, length), device=device, generator=g)
    mask = torch.ones(batch, length, device=device)
    advantages = torch.randn(batch, device=device, generator=g)
    old_logp = -5 + torch.randn(batch, length, device=device, generator=g)
    ref_logp = -5 + torch.randn(batch, length, device=device, generator=g)

    if mode == "fwd":
        fwd = torch.compile(naive_linear_logprobs) if method == "compile" else functools.partial(
            linear_logprobs, backend=method)
        out_bytes = n * 4

        def step():
            with torch.no_grad():
                fwd(hidden.reshape(-1, h), weight, targets.reshape(-1))
    else:
        hidden.requires_grad_()
        weight.requires_grad_()
        if method == "liger":
            from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

            liger = LigerFusedLinearGRPOLoss(beta=0.04, compiled=cuda, use_ref_model=True, loss_type="grpo")

            def loss_fn():
                return liger(hidden, weight, targets, mask, advantages, ref_per_token_logps=ref_logp,
                             old_per_token_logps=old_logp)[0]
        else:
            loss = functools.partial(grpo_loss, backend="naive" if method == "compile" else method)
            loss = torch.compile(loss) if method == "compile" else loss

            def loss_fn():
                return loss(hidden, weight, targets, mask, advantages, old_logp, ref_logp, beta=0.04)[0]

        out_bytes = (hidden.numel() + weight.numel()) * hidden.element_size()  # the two gradients

        def step():
            hidden.grad = weight.grad = None
            loss_fn().backward()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if method == "compile":
        step()  # compilation must not count as workspace
    sync()
    result = dict(spec)
    if cuda:
        hidden.grad = weight.grad = None
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        hidden.grad = weight.grad = None
        with _RssSampler() as sampler:
            step()
        peak = sampler.peak - sampler.base
    times = []
    for _ in range(spec["repeats"]):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    result.update(time_s=statistics.median(times), peak_mib=peak / MiB, workspace_mib=(peak - out_bytes) / MiB,
                  device=torch.cuda.get_device_name() if cuda else "cpu")
    return result


def _skip_reason(method: str, mode: str, cuda: bool) -> str | None:
    if method == "triton" and not cuda:
        return "triton needs CUDA (its CPU interpreter is for the tests only)"
    if method == "liger":
        try:
            import liger_kernel.chunked_loss  # noqa: F401
        except ImportError:
            return "liger_kernel not installed"
        if mode == "fwd":
            return "Liger has no forward-only log-prob op"
    return None


def _run_one(spec: dict, timeout_s: float) -> dict:
    # A fixed mmap threshold also turns off glibc's adaptive one, which would keep freed tensors in the heap.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 * MiB))
    code = "import json, sys; from kernel_bench import measure; print(json.dumps(measure(json.loads(sys.argv[1]))))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              env=env, cwd=Path(__file__).parent, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(spec, error=f"timeout after {timeout_s:.0f}s")
    if proc.returncode != 0:
        return dict(spec, error=(proc.stderr.strip().splitlines() or ["killed"])[-1][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    lines = ["| H | mode | N | method | time (s) | peak (MiB) | workspace (MiB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            cells = [r.get("error") or r["skipped"], "", ""]
        else:
            cells = [f"{r['time_s']:.3f}", f"{r['peak_mib']:.0f}", f"{r['workspace_mib']:.0f}"]
        lines.append(f"| {r['hidden']} | {r['mode']} | {r['tokens']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(len(modes), 2, figsize=(11, 4 * len(modes)), squeeze=False)
    for i, mode in enumerate(modes):
        for j, (key, label) in enumerate([("time_s", "median time (s)"), ("workspace_mib", "workspace (MiB)")]):
            ax = axes[i][j]
            for method in METHODS:
                pts = [(r["tokens"], r[key]) for r in rows if r["mode"] == mode and r["method"] == method and key in r]
                if pts:
                    ax.plot(*zip(*sorted(pts)), marker="o", label=method)
            ax.set(xscale="log", yscale="log", xlabel="tokens N", ylabel=label, title=f"{mode}: {label}")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _result(rows: list[dict], mode: str, n: int, method: str) -> dict | None:
    return next((r for r in rows if (r["mode"], r["tokens"], r["method"]) == (mode, n, method) and "time_s" in r), None)


def _verdict(n: int, at: int, ok: bool) -> str:
    return f"not measured (needs N={at})" if n < at else "met" if ok else "NOT met"


def target_checks(rows: list[dict], cuda: bool) -> list[str]:
    """The issue's targets, judged on these rows (the fast method is triton on GPU, torch on CPU)."""
    fast = "triton" if cuda else "torch"
    sizes = sorted({r["tokens"] for r in rows})
    lines = []
    for mode in ("fwd", "fwd_bwd"):
        both = [(n, _result(rows, mode, n, fast), _result(rows, mode, n, "naive")) for n in sizes]
        both = [(n, a, b) for n, a, b in both if a and b]
        if both:
            n, a, b = both[-1]
            peak, speed = b["peak_mib"] / a["peak_mib"], b["time_s"] / a["time_s"]
            line = f"{mode} N={n}: {fast} peak {peak:.1f}x below naive, {speed:.2f}x naive's speed"
            if not cuda:
                line += "; target peak >= 10x, speed >= 1/1.2 at N=4096: " + _verdict(
                    n, 4096, peak >= 10 and speed >= 1 / 1.2)
            elif mode == "fwd_bwd":
                line += "; target speed >= 1.5x at N=16384: " + _verdict(n, 16384, speed >= 1.5)
            lines.append(line)
        for n in sizes if cuda and mode == "fwd_bwd" else ():
            a, liger = _result(rows, mode, n, fast), _result(rows, mode, n, "liger")
            if a and liger:
                ok = a["time_s"] <= liger["time_s"]
                lines.append(f"{mode} N={n}: triton {liger['time_s'] / a['time_s']:.2f}x Liger's speed; target >= 1: "
                             + ("met" if ok else "NOT met"))
        sweep = [r for r in (_result(rows, mode, n, fast) for n in sizes) if r]
        if len(sweep) > 1:  # the two largest N: below one full chunk the workspace still fills up
            prev, last = sweep[-2], sweep[-1]
            growth = (last["workspace_mib"] - prev["workspace_mib"]) * MiB / (last["tokens"] - prev["tokens"])
            lines.append(f"{mode}: {fast} workspace {prev['workspace_mib']:.0f} MiB at N={prev['tokens']}, "
                         f"{last['workspace_mib']:.0f} MiB at N={last['tokens']}: {growth:.0f} bytes per extra token")
    return lines


def main(cfg: Config) -> None:
    import torch

    cuda = torch.cuda.is_available()
    tokens = cfg.tokens or ((1024, 4096, 8192, 16384) if cuda else (256, 1024))
    hiddens = cfg.hidden or ((2560, 4096) if cuda else (2560,) if cfg.full else (512,))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    for h in hiddens:
        rows = []
        for mode in cfg.modes:
            for n in tokens:
                for method in cfg.methods:
                    spec = dict(method=method, mode=mode, tokens=n, hidden=h, vocab=cfg.vocab, dtype=cfg.dtype,
                                seq_len=cfg.seq_len, repeats=cfg.repeats)
                    reason = _skip_reason(method, mode, cuda)
                    row = dict(spec, skipped=reason) if reason else _run_one(spec, cfg.timeout_s)
                    rows.append(row)
                    print(_table([row]).splitlines()[-1], flush=True)
        stem = cfg.out_dir / f"kernel_bench_H{h}"
        stem.with_suffix(".json").write_text(json.dumps(dict(config=asdict(cfg) | {"out_dir": str(cfg.out_dir)},
                                                             rows=rows), indent=1))
        _plot(rows, stem.with_suffix(".png"))
        checks = "\n".join(target_checks(rows, cuda))
        print(f"\n{_table(rows)}\n\n{checks}\n\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main(tyro.cli(Config))

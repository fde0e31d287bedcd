"""One dispatch mode under fake tensors that does two things for the plan:

- Host reads take the worst case's branch. A fake tensor has no values, so wherever the trainer reads
  one (`.item()`, `.tolist()`, `bool(...)`, a boolean index, `nonzero`), this mode answers from a
  shadow: a small real CPU tensor computed alongside by the same ops. Values the fake model computes
  (sampled tokens, logits, losses) get a worst-case stand-in instead: every sampled token is an
  ordinary token that stops nothing, every float is finite. From there the real code computes the
  rest: no row finishes, every mask is full, every prompt has its full width, and every branch the
  trainer takes on those reads is the one the worst case takes.
- It meters work: FLOPs (torch.utils.flop_counter's formulas), bytes read and written per op (the
  op's tensor inputs and outputs; views move nothing) and collective bytes, per phase.
"""

import math
from collections import Counter, defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch._guards import active_fake_mode
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
SHADOW_LIMIT = 1 << 22  # elements: larger tensors (weights, activations, the KV cache) never get values
MATMULS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul"}
SCATTERS = {"copy_", "index_copy_", "index_put_", "index_put", "scatter_", "scatter_add_", "masked_scatter_", "index_add_"}


class _Propagation:
    """DTensor works out an op's output shapes by running it on placeholders of the global shapes
    under the active fake mode, which here is the plan's own: those ops are bookkeeping, not memory or
    work on the GPU. This stands in for DTensor's (replaceable) sharding-propagation lock and says
    when they run."""

    active = False

    def __enter__(self) -> None:
        _Propagation.active = True

    def __exit__(self, *exc) -> None:
        _Propagation.active = False


@contextmanager
def dtensor_propagation_marked() -> Iterator[None]:
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    before = ShardingPropagator._fake_mode_lock
    ShardingPropagator._fake_mode_lock = _Propagation()
    try:
        yield
    finally:
        ShardingPropagator._fake_mode_lock = before


def propagating() -> bool:
    return _Propagation.active


class PlanError(RuntimeError):
    """The plan met a host read it has no worst case for."""


def _attention_flops(q: torch.Size, k: torch.Size, backward: bool) -> int:
    """QK^T and PV over every (query, key) pair: 4 B Hq Tq Tk D forward; the backward does 5 such
    matmuls instead of 2. Grouped-query layouts count the query heads."""
    batch, tq, tk, d = math.prod(q[:-2]), q[-2], k[-2], q[-1]
    return int(4 * batch * tq * tk * d * (2.5 if backward else 1.0))


def flops_of(func, args, kwargs, out) -> int:
    """FLOPs of one op (0 for ops without a formula: elementwise work is counted in bytes only).
    Under inference mode the composite ops (linear, matmul, SDPA) arrive undecomposed."""
    name = func.overloadpacket.__name__
    if "attention" in name:
        grad = name.endswith("backward")
        q, k = (args[1], args[2]) if grad else (args[0], args[1])
        return _attention_flops(q.shape, k.shape, grad)
    if name == "linear":
        return 2 * args[0].numel() * args[1].shape[0]
    if name == "matmul":
        return 2 * out.numel() * args[0].shape[-1]
    f = flop_registry.get(func.overloadpacket)
    return f(*args, **kwargs, out_val=out) if f else 0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Work:
    """What one phase asks of the GPU: per op kind, FLOPs and bytes, kept per op so that a roofline
    can take each op's own bound (memory- or compute-bound) instead of the phase's average."""

    def __init__(self) -> None:
        self.ops: Counter[tuple[str, int, int]] = Counter()  # (kind, flops, bytes) -> count
        self.comm_bytes = 0

    def add(self, kind: str, flops: int, nbytes: int, count: int = 1) -> None:
        self.ops[(kind, flops, nbytes)] += count

    def interpolate(self, first: list[tuple[str, int, int]], last: list[tuple[str, int, int]], steps: int) -> None:
        """Add `steps` evenly spaced steps strictly between two measured ones whose ops match one to
        one (the same code at other sizes): exact when each op's size is constant or linear in the
        step, as in decoding, where only attention's reads grow, by one column per row per step."""
        for (kind, f0, b0), (_, f1, b1) in zip(first, last, strict=True):
            if (f0, b0) == (f1, b1):
                self.add(kind, f0, b0, steps)
                continue
            for k in range(1, steps + 1):
                self.add(kind, f0 + (f1 - f0) * k // (steps + 1), b0 + (b1 - b0) * k // (steps + 1))

    def total(self, kind: str | None = None) -> tuple[int, int]:
        """(FLOPs, bytes) over the ops of one kind (matmul, attention, other) or all."""
        f = b = 0
        for (k, fl, by), n in self.ops.items():
            if kind is None or k == kind:
                f, b = f + fl * n, b + by * n
        return f, b

    def roofline_s(self, flops_per_s: float, bytes_per_s: float) -> float:
        """Each op at its own bound: max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)."""
        return sum(n * max(fl / flops_per_s, by / bytes_per_s) for (_, fl, by), n in self.ops.items())


class Trace(TorchDispatchMode):
    """Enter inside FakeTensorMode (and inside the memory tracker, so that tensors this mode makes
    for boolean indexing are tracked like the real ones)."""

    def __init__(self, fill_token: int) -> None:
        super().__init__()
        self.fill_token = fill_token  # what every sampled token is: no stop token, no padding
        self.shadows = torch.utils.weak.WeakTensorKeyDictionary()
        self.work: dict[str, Work] = defaultdict(Work)
        self.phase = "setup"
        self.guesses: Counter[str] = Counter()  # host reads of float values nothing determines (metrics)
        self.captured: list[tuple[str, int, int]] | None = None  # when a list: every metered op is also appended

    @contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        before, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = before

    # ---- shadows --------------------------------------------------------------------------------
    def value(self, t: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(t, torch.Tensor) or isinstance(t, DTensor):
            return None
        if type(t) is torch.Tensor:  # a real tensor (e.g. a constant the code made on the host)
            return t if t.numel() <= SHADOW_LIMIT else None
        return self.shadows.get(t)

    def _stand_in(self, t: torch.Tensor) -> torch.Tensor | None:
        """The worst case's value of a tensor no shadow determines, when small enough."""
        if t.numel() > SHADOW_LIMIT:
            return None
        with _disable_current_modes():
            if t.dtype == torch.bool:
                return torch.ones(t.shape, dtype=torch.bool)
            return torch.full(t.shape, self.fill_token, dtype=t.dtype)

    def _set(self, t: torch.Tensor, v: torch.Tensor | None) -> None:
        if v is not None and isinstance(t, torch.Tensor) and not isinstance(t, DTensor) and type(t) is not torch.Tensor:
            self.shadows[t] = v

    def _compute(self, func, args, kwargs) -> Any:
        """The op on the shadows of its inputs (None when some has none or it fails)."""
        flat = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if any(self.value(a) is None for a in flat):
            return None

        def swap(a: Any) -> Any:
            if isinstance(a, torch.Tensor):
                return self.value(a)
            return torch.device("cpu") if isinstance(a, torch.device) else a

        try:
            with _disable_current_modes():
                return func(*tree_map(swap, args), **tree_map(swap, kwargs))
        except Exception:  # noqa: BLE001 - a shadow that cannot be computed is only unknown
            return None

    def _propagate(self, func, args, kwargs, flat_in: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        if not outs or any(t.numel() > SHADOW_LIMIT for t in outs):
            return
        if func.namespace == "c10d":  # every rank holds the same worst case: a gather repeats this rank's values
            if func is torch.ops.c10d.allgather_.default and self.value(args[1][0]) is not None:
                for t in args[0][0]:
                    self._set(t, self.value(args[1][0]).clone())
            return
        # Computed: what follows from known values (host constants, bookkeeping on them). Not: random
        # draws, uninitialised memory, and floats made from nothing (parameters, the model's math).
        known = (
            torch.Tag.nondeterministic_seeded not in func.tags
            and "empty" not in func.overloadpacket.__name__
            and (flat_in or not any(t.dtype.is_floating_point for t in outs))
            and all(self.value(a) is not None for a in flat_in)
        )
        if known:
            result = self._compute(func, args, kwargs)
            if result is not None:
                for t, v in zip(outs, [r for r in tree_flatten(result)[0] if isinstance(r, torch.Tensor)]):
                    self._set(t, v)
                return
        mutated = func._schema.is_mutable
        for t in outs:
            if mutated and t in self.shadows:
                del self.shadows[t]  # written from values nothing determines: back to the stand-in
            if t not in self.shadows and not t.dtype.is_floating_point:  # floats stay unknown: reads get 1.0
                self._set(t, self._stand_in(t))

    def _index_from_mask(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """A boolean mask as the long indices of its True elements (fake tensors with shadows)."""
        v = self.value(mask)
        if v is None:
            raise PlanError(f"a boolean mask of shape {tuple(mask.shape)} with no worst-case value")
        with _disable_current_modes():
            columns = v.nonzero().unbind(1)
        out = []
        for column in columns:
            t = torch.empty(column.shape[0], dtype=torch.long, device=mask.device)
            self._set(t, column)
            out.append(t)
        return out

    def _expand_masks(self, indices: list) -> list:
        out = []
        for i in indices:
            if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8):
                out += self._index_from_mask(i)
            else:
                out.append(i)
        return out

    # ---- dispatch -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented  # let DTensor desugar into local ops, which come back here
        kwargs = kwargs or {}
        if propagating():
            return func(*args, **kwargs)
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        if not active_fake_mode():  # real tensors (the tests' real run): only metered
            out = func(*args, **kwargs)
            self._meter(func, args, kwargs, out, flat_in, [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)])
            return out
        if func in (aten._local_scalar_dense.default, aten.item.default):
            return self._read(args[0])
        if func is aten.nonzero.default:
            (where,) = [self._index_from_mask(args[0])]
            out = torch.stack(where, dim=1) if where else torch.empty(0, 0, dtype=torch.long, device=args[0].device)
            with _disable_current_modes():
                self._set(out, torch.stack([self.value(w) for w in where], dim=1))
            return out
        if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
            args = (args[0], self._expand_masks(args[1]), *args[2:])
        try:
            out = func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            out = self._from_shadows(func, args, kwargs)
        flat_in = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self._meter(func, args, kwargs, out, flat_in, outs)
        self._propagate(func, args, kwargs, flat_in, outs)
        return out

    def _from_shadows(self, func, args, kwargs) -> Any:
        """An op whose output shape depends on values (bincount, unique, ...): computed on the
        shadows, its output made as fake tensors of the shapes that gives."""
        result = self._compute(func, args, kwargs)
        if result is None:
            raise PlanError(f"{func} needs values the plan cannot determine")
        device = next(a.device for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor))

        def fake(r: Any) -> Any:
            if not isinstance(r, torch.Tensor):
                return r
            t = torch.empty(r.shape, dtype=r.dtype, device=device)
            self._set(t, r)
            return t

        return tree_map(fake, result)

    def _read(self, t: torch.Tensor) -> Any:
        v = self.value(t)
        if v is None:
            if not t.dtype.is_floating_point:
                raise PlanError(f"the code reads a {t.dtype} value the plan cannot determine")
            self.guesses[self.phase] += 1
            return 1.0
        with _disable_current_modes():
            return v.item()

    def _meter(self, func, args, kwargs, out, tensors: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        ns = func.namespace
        if ns in ("c10d", "_c10d_functional"):
            self.work[self.phase].comm_bytes += max((_nbytes(t) for t in tensors), default=0)
            return
        if func.is_view or ns == "prim" or func in (aten.detach.default, aten.lift_fresh.default):
            return
        name = func.overloadpacket.__name__
        if name in SCATTERS:  # writes its source into a slice of `self` (e.g. one KV-cache column): not all of it
            nbytes = 2 * sum(_nbytes(t) for t in tensors[1:])
        else:
            nbytes = sum(_nbytes(t) for t in tensors + outs)
        kind = "attention" if "attention" in name else "matmul" if name in MATMULS else "other"
        op = (kind, flops_of(func, args, kwargs, out), nbytes)
        self.work[self.phase].add(*op)
        if self.captured is not None:
            self.captured.append(op)

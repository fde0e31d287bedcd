"""Run one GRPO step of the real trainer on fake tensors, in a fake world of N ranks, and record
each phase's peak memory (torch.distributed._tools' trackers) and work (plan/trace.py).

The trainer is the real `Trainer`, its phases the real methods (`setup`, `step`, `update`); only
what would read weights, data or the hub is replaced, in `PlanTrainer`: the model is built from
its config.json with no weights, the tokenizer is the offline tiny one (token ids only matter
through shapes), and every prompt has the planned number of tokens. Phases are marked by wrapping
methods of this one trainer object, never by editing the code that trains."""

import contextlib
import copy
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPModMemStats
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import Qwen3Config, Qwen3ForCausalLM

from socialr1.config import ConfigError, TrainConfig
from socialr1.items import MCQItem
from socialr1.plan.config import PlanConfig
from socialr1.models import build_tiny
from socialr1.plan.trace import PlanError, Trace, Work, dtensor_propagation_marked, propagating
from socialr1.prompts import user_message
from socialr1.rollout.engine import round_up
from socialr1.trainer import Trainer

CONFIGS = Path(__file__).parent / "configs"
SHIPPED = {"Qwen/Qwen3-4B": "qwen3-4b.json", "Qwen/Qwen3-8B": "qwen3-8b.json"}
TOTAL = "Total"
# Phases in step order; the rollout's decode is its own phase (its work is memory-bound).
PHASES = ("load and shard", "rollout: prefill", "rollout: decode", "reward", "old / ref log-probs", "update")


def architecture(cfg: TrainConfig, path: str | None) -> dict[str, Any] | None:
    """The model's config.json as a dict: --plan.model-config, a local model folder, or the config
    shipped for Qwen3-4B / Qwen3-8B. None for the tiny model, which the trainer builds itself."""
    if cfg.model.tiny:
        return None
    name = cfg.model.name_or_path
    found = Path(path) if path else Path(name) / "config.json" if Path(name).is_dir() else None
    if found is None and name in SHIPPED:
        found = CONFIGS / SHIPPED[name]
    if found is None:
        raise ConfigError(f"--model.name-or-path {name}: no config.json offline; pass --plan.model-config path/to/config.json")
    if not found.is_file():
        raise ConfigError(f"--plan.model-config {found}: no such file")
    return json.loads(found.read_text())


@dataclass
class Recorded:
    """What planning one configuration measured (one rank: ranks are alike in the worst case)."""

    memory: dict[str, dict[str, int]]  # phase -> category -> bytes at the phase's peak (Total: the peak)
    work: dict[str, Work]  # phase -> FLOPs and bytes
    sharded_param_bytes: int  # this rank's shards of the policy's and the reference's parameters
    gathered_param_bytes: int  # the policy's whole parameters in the compute dtype (the rollout gathers them)
    decode_tokens: int  # decode steps of the rollout
    assumptions: list[str]


class PlanTrainer(Trainer):
    """The trainer with weights, data and the hub replaced by what the plan assumes."""

    def __init__(self, cfg: TrainConfig, arch: dict[str, Any] | None, prompt_tokens: int, trace: Trace):
        super().__init__(cfg)
        self.arch, self.prompt_tokens, self.trace = arch, prompt_tokens, trace

    def _load_model(self):
        """As the trainer's, without `.to(device)`: fake parameters are made on the planned device
        already (and a module holding fake parameters cannot be moved). The corpus is the
        trainer's, so that the tiny model's vocabulary is the same as in a real run."""
        corpus = [user_message(it, self.cfg.sip) for it in self.items]
        corpus += [self.cfg.sip.render(it.gold_stages, it.answer_letter) for it in self.items if it.gold_stages]
        lm, tokenizer = build_tiny(self.cfg.model, corpus, self.cfg.seed)
        if self.arch is None:
            return lm, tokenizer
        config = Qwen3Config(**{k: v for k, v in self.arch.items() if k not in ("architectures", "transformers_version")})
        config._attn_implementation = "sdpa"
        torch.manual_seed(self.cfg.seed)
        return Qwen3ForCausalLM(config), tokenizer  # float32 master weights (the default dtype), as load_pretrained

    def _encode(self, items: list[MCQItem], what: str) -> tuple[list[MCQItem], list[list[int]]]:
        self.trace.fill_token = _fill_token(self)  # also every sampled token's stand-in
        return items, [[self.trace.fill_token] * self.prompt_tokens for _ in items]


def plan_config(cfg: TrainConfig, pc: PlanConfig, output_dir: str) -> TrainConfig:
    """The run's settings as the plan runs them: the GPU's compute dtype, generated items instead of
    the data set, no eval / warm start / samples, offline rewards."""
    c = copy.deepcopy(cfg)
    c.model.tiny, c.model.random_init = True, False
    if c.model.dtype == "auto":
        c.model.dtype = "bfloat16"  # what auto picks on CUDA
    c.device = "cpu"
    c.data.synthetic = max(c.rollout.prompts_per_step, pc.world_size)
    c.data.eval_path, c.data.eval_synthetic = None, 0
    c.warmstart = dataclasses.replace(c.warmstart, steps=0)
    c.reward = dataclasses.replace(c.reward, structure="lexical", content="lexical")
    c.sample_every, c.output_dir, c.resume, c.overwrite = 0, output_dir, None, False
    c.steps = max(c.steps, 1)
    return c


@contextlib.contextmanager
def fake_world(size: int) -> Iterator[None]:
    """A process group of `size` ranks in this process: collectives return at once (fake backend)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise RuntimeError("the plan needs its own process group; one is already initialised")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class PeakOnly:
    """The trackers' peak bookkeeping without their per-module statistics, which the plan does not
    read and which cost a scan of every module per op; and blind to DTensor's shape propagation."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if propagating():
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[TOTAL]:
                self._peak_mem[dev] = snap[TOTAL]
                self._peak_mem_snap[dev] = dict(snap)


class LoadTracker(PeakOnly, MemTracker):
    pass


class StepTracker(PeakOnly, FSDPMemTracker):
    """FSDPMemTracker for the whole step. Its per-module statistics (unused here) allow one forward
    per module per iteration; the prompt-shared forward runs each layer twice (prompt, then
    completions), and the log-prob passes are FSDP forward methods, not module calls. Dropping a
    module's statistics before each of its forwards keeps the tracker's categories, which are what
    the plan reads."""

    def _fsdp_state_pre_forward(self, fsdp_mod, orig_fsdp_state_pre_fw):
        inner = super()._fsdp_state_pre_forward(fsdp_mod, orig_fsdp_state_pre_fw)

        def pre_forward(*args, **kwargs):
            if not self._mod_tracker.is_bw and fsdp_mod in self.memory_tracking:
                del self.memory_tracking[fsdp_mod]
            return inner(*args, **kwargs)

        return pre_forward

    def _fsdp_param_group_pre_backward(self, fsdp_mod, orig):
        return self._with_stats(fsdp_mod, super()._fsdp_param_group_pre_backward(fsdp_mod, orig))

    def _fsdp_param_group_post_backward(self, fsdp_mod, orig):
        return self._with_stats(fsdp_mod, super()._fsdp_param_group_post_backward(fsdp_mod, orig))

    def _with_stats(self, fsdp_mod, hook):
        """The root's forward methods bypass its forward hook: give it statistics before its backward."""

        def run(*args, **kwargs):
            if fsdp_mod not in self.memory_tracking:
                self.memory_tracking[fsdp_mod] = _FSDPModMemStats(self._mod_tracker.get_known_fqn(fsdp_mod) or "root")
            return hook(*args, **kwargs)

        return run


class Phases:
    """Peak memory per phase from one tracker: on each switch, the peak since the last switch is
    the closing phase's, and the tracker's peak restarts from the current usage."""

    def __init__(self, trace: Trace):
        self.trace, self.tracker = trace, None
        self.memory: dict[str, dict[str, int]] = {}

    def _close(self) -> None:
        if self.tracker is None or self.trace.phase not in PHASES:
            return
        peak = self.tracker.get_tracker_snapshot("peak")
        snap = next(iter(peak.values()), {TOTAL: 0})
        if snap.get(TOTAL, 0) >= self.memory.get(self.trace.phase, {}).get(TOTAL, -1):
            self.memory[self.trace.phase] = snap
        now = self.tracker.get_tracker_snapshot()
        self.tracker._peak_mem_snap = now  # restart the peak (what MemTracker.__enter__ does)
        self.tracker._peak_mem = {dev: s[TOTAL] for dev, s in now.items()}

    def switch(self, name: str) -> None:
        self._close()
        self.trace.phase = name

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = self.trace.phase
        self.switch(name)
        try:
            yield
        finally:
            self.switch(before)

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        """Calls of obj.attr run as phase `name` (an attribute of this object only)."""
        inner = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            with self.phase(name):
                return inner(*args, **kwargs)

        setattr(obj, attr, wrapped)

    @contextlib.contextmanager
    def tracking(self, tracker: MemTracker) -> Iterator[None]:
        self.tracker = tracker
        with tracker:
            try:
                yield
            finally:
                self._close()
                self.tracker = None


def _fill_token(trainer: Trainer) -> int:
    """An ordinary token: neither padding nor a stop token (what every sampled token is in the plan)."""
    taken = set(trainer.stop_ids) | {trainer.pad_id}
    return next(t for t in range(len(trainer.tokenizer)) if t not in taken)


def _sharded_bytes(*models: nn.Module | None) -> int:
    total = 0
    for m in models:
        for p in [] if m is None else m.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.numel() * local.element_size()
    return total


def record(cfg: TrainConfig, pc: PlanConfig, fake: bool = True) -> Recorded:
    """Plan one configuration: set up, then one step with the optimizer's state in place.
    fake=False runs the same on real tensors in a real world of one (the tests' measurement), with
    sampling that never stops a row, so that its shapes are the plan's worst case."""
    arch = architecture(cfg, pc.model_config)
    prompt_tokens = pc.prompt_tokens or cfg.data.max_prompt_tokens
    completion_tokens = min(pc.completion_tokens or cfg.rollout.max_new_tokens, cfg.rollout.max_new_tokens)
    world = fake_world(pc.world_size) if fake else contextlib.nullcontext()
    fake_mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="socialr1-plan-") as out, world, fake_mode, dtensor_propagation_marked():
        c = plan_config(cfg, pc, out)
        trace = Trace(fill_token=0)
        phases = Phases(trace)
        with trace:
            trainer = PlanTrainer(c, arch, prompt_tokens, trace)
            trainer.log.enabled = False
            trace.phase = PHASES[0]
            with phases.tracking(LoadTracker()):
                trainer.setup()
            if not fake:
                trainer.sampling = dataclasses.replace(trainer.sampling, stop_ids=())
            policy, ref = trainer.policy, trainer.ref
            with trace.in_phase("untracked"):
                _as_after_a_step(trainer.opt)
            tracker = StepTracker(policy, trainer.opt)
            tracker._root_mod = nn.ModuleList([m for m in (policy, ref) if m is not None])  # both models' shards
            tracker.track_inputs((trainer.features,))
            decoded = _instrument(trainer, phases, tracker, trace, completion_tokens)
            trace.phase = "reward"  # the step's own bookkeeping between the wrapped phases
            with phases.tracking(tracker):
                trainer.step(0)
            decode_tokens = decoded[0]
            sharded = _sharded_bytes(policy, ref)
            gathered = sum(p.numel() for p in policy.parameters()) * trainer.dtype.itemsize
            trainer.close()
        assumptions = [
            f"every prompt has {prompt_tokens} tokens" + (" (--data.max-prompt-tokens)" if not pc.prompt_tokens else ""),
            _completions_assumed(cfg, completion_tokens),
            f"compute dtype {c.model.dtype}, attention through SDPA, the chunked (torch) log-prob kernels",
            "rewards lexical (in-process); a judge or reward-model service is not on this GPU's bill",
        ]
        return Recorded(phases.memory, dict(trace.work), sharded, gathered, decode_tokens, assumptions)


def decode_steps(cfg: TrainConfig, completion_tokens: int) -> int:
    """Tokens the engine samples per row when every row stops after `completion_tokens`: it reads
    which rows have finished every --rollout.check-every steps, so it decodes on to that check."""
    return min(cfg.rollout.max_new_tokens, round_up(completion_tokens, cfg.rollout.check_every))


def _completions_assumed(cfg: TrainConfig, completion_tokens: int) -> str:
    if completion_tokens == cfg.rollout.max_new_tokens:
        return f"every completion runs to --rollout.max-new-tokens {completion_tokens} (no row stops early)"
    return (f"every completion has {completion_tokens} tokens (--plan.completion-tokens; its last a stop token), "
            f"so the rollout decodes {decode_steps(cfg, completion_tokens)} steps (to the next finished-rows check)")


@contextlib.contextmanager
def _without_module_tracking(tracker: MemTracker) -> Iterator[None]:
    """The rollout runs no backward, so the tracker's module hierarchy (kept for the backward) is
    paused: under activation checkpointing HF marks the embeddings' output as requiring grad, which
    ModTracker cannot hook inside inference mode."""
    tracker._mod_tracker.__exit__(None, None, None)
    try:
        yield
    finally:
        tracker._mod_tracker.__enter__()


def _as_after_a_step(opt: torch.optim.Optimizer) -> None:
    """Memory as a previous step leaves it, so that the planned step is a steady-state one: AdamW's
    state (made at its first step) and the gradients, which stay allocated until the next update's
    zero_grad, i.e. through the rollout. One step on zero gradients, which leaves the weights as
    they are (without weight decay), makes both."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()


def _instrument(trainer: Trainer, phases: Phases, tracker: MemTracker, trace: Trace, completion_tokens: int) -> list[int]:
    """Mark the step's phases on this trainer object, and have every row sample a stop token as its
    `completion_tokens`-th token, so that the engine's own stop path ends the rows. Returns [decode
    steps], filled in as it runs."""
    rollout, step = trainer.rollout, trainer.engine._step
    steps = decode_steps(trainer.cfg, completion_tokens)
    if completion_tokens < trainer.sampling.max_new_tokens and not trainer.sampling.stop_ids:
        raise ConfigError(f"--plan.completion-tokens {completion_tokens}: the tokenizer has no stop token to end a row with")

    def untracked_rollout(*args):
        ordinary = trace.fill_token
        try:
            with _without_module_tracking(tracker):
                out = rollout(*args)
        finally:
            trace.fill_token = ordinary
        if decoded[0] != steps - 1:
            raise PlanError(f"the rollout called the model {decoded[0]} times to decode; the plan expected {steps - 1}")
        return out

    trainer.rollout = untracked_rollout
    phases.wrap(trainer, "rollout", "rollout: prefill")
    phases.wrap(trainer.reward, "score", "reward")
    phases.wrap(trainer, "logprobs", "old / ref log-probs")
    phases.wrap(trainer, "update", "update")

    def decode(rows: int, length: int):
        """The decode loop runs every step (sampling, the row checks, the cache); the model runs at
        its first and last step, and the steps between get a logits tensor of the model's shape and
        the work interpolated between those two (Work.interpolate: exact for decoding)."""
        phases.switch("rollout: decode")
        inner = step(rows, length)
        last = steps - 2  # the loop's last model call (its final token needs none)
        measured: dict[int, list] = {}
        ordinary = trace.fill_token
        stop_at = completion_tokens - 1 if completion_tokens < trainer.sampling.max_new_tokens else None

        def sampled(t: int) -> int:
            """Token t of every row (its stand-in: what choose() draws from fake logits)."""
            return trainer.sampling.stop_ids[0] if t == stop_at else ordinary

        def model(k: int, lm, cache, tokens, *args, **kwargs) -> torch.Tensor:
            if 0 < k < last:
                return torch.zeros(len(tokens), lm.lm_head.weight.shape[0], dtype=torch.float32, device=tokens.device)
            trace.captured = measured[k] = []
            try:
                logits = inner(lm, cache, tokens, *args, **kwargs)
            finally:
                trace.captured = None
            if k == last and last > 0:
                trace.work["rollout: decode"].interpolate(measured[0], measured[last], last - 1)
            return logits

        def counted(lm, cache, tokens, *args, **kwargs):
            k = decoded[0]
            decoded[0] += 1
            trace.fill_token = ordinary
            logits = model(k, lm, cache, tokens, *args, **kwargs)
            trace.fill_token = sampled(k + 1)  # drawn from these logits
            return logits

        trace.fill_token = sampled(0)  # drawn from the prefill's logits
        return counted

    decoded = [0]
    trainer.engine._step = decode
    return decoded

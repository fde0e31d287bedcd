"""The run around a trainer's steps, the same for GRPO (socialr1/trainer.py) and the reward model
(socialr1/reward_model/trainer.py): output-dir rules, resume (a path or `auto`), checkpoint cadence
and `--keep-last`, stop signals agreed across ranks, the non-finite guard and the skip limit,
metrics trimmed on resume, the progress bar, the final save. A trainer supplies its step, its eval
and what its checkpoints hold (`Steps`); the run does the rest.

Stopping. SIGTERM or Ctrl-C on any rank asks for a stop, which must leave a resumable checkpoint
within the grace a launcher gives (torchrun: 30 s) even when a step takes minutes. Until a step
changes the weights it can be dropped: the trainer calls `gate()` (a collective) where the weights
are still those of the last completed step, and its rollout, which has no collective, calls
`interrupt()` every few tokens. A stop agreed there drops the step and checkpoints the last
completed one, with the random state as it was when the dropped step began, so a resumed run redoes
it exactly. Once an optimizer step has begun, the step finishes and is checkpointed."""

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedTokenizerBase

from socialr1.checkpoint import (
    latest_checkpoint,
    load_train_state,
    prune_checkpoints,
    read_train_meta,
    rng_state,
    save_checkpoint,
)
from socialr1.config import ConfigError, RunSettings
from socialr1.distributed import World
from socialr1.metrics import RunLog
from socialr1.plots import plot_curves


class RunStopped(Exception):
    """The run cannot go on (e.g. too many skipped steps); the message says why and what to resume from."""


class Abandoned(Exception):
    """A stop drops the step in progress. `agreed` is False when only this rank knows so far (raised
    by `interrupt()`): it must still meet the other ranks at their next gate."""

    def __init__(self, agreed: bool):
        super().__init__("stop requested")
        self.agreed = agreed


@dataclass
class State:
    """What a trainer's checkpoints hold."""

    model: nn.Module  # the sharded model being trained
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype  # the dtype the exported weights are written in
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    frozen: dict[str, nn.Module] = field(default_factory=dict)  # other models a resume must restore (GRPO's KL reference)
    meta: dict = field(default_factory=dict)  # the trainer's own entries in train_state/trainer.pt


class Steps(Protocol):
    """What a trainer gives the run."""

    has_eval: bool

    def step(self, step: int) -> dict[str, float]: ...

    def run_eval(self, step: int) -> dict[str, float]: ...

    def state(self) -> State: ...


class Run:
    def __init__(self, cfg: RunSettings, world: World, log: RunLog, steps: int, shown: str, product: str,
                 eval_first: bool):
        self.cfg, self.world, self.log, self.steps = cfg, world, log, steps
        self.shown, self.product = shown, product  # the metric on the progress bar; what final/ holds
        self.eval_first = eval_first  # also evaluate before the first step (the baseline a run improves on)
        self.out = Path(cfg.output_dir)
        self.start_step = self.skipped_total = self.skipped_in_a_row = 0
        self.skip_reason: str | None = None
        self.resume_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, float] = {}
        self.replace_earlier_run = False
        self.signals: list[int] = []  # received here; the ranks agree on them at gates and after each step
        self.stop_save_seconds: float | None = None  # the stop's own checkpoint write, when it wrote one

    # ---- before anything is loaded -------------------------------------------------------------
    def prepare(self, shape_flags: tuple[str, ...]) -> dict | None:
        """Cheap checks of the output dir and the checkpoint to resume from; returns that
        checkpoint's meta (None for a fresh start). `shape_flags`: settings whose change gives the
        parameters other shapes, so that a checkpoint of one run cannot resume the other."""
        self.resume_from = self._resume_dir()
        meta = read_train_meta(self.resume_from) if self.resume_from else None
        if meta:
            self._check_same(meta["config"], shape_flags)
        self.replace_earlier_run = self._check_output_dir()
        return meta

    def _resume_dir(self) -> Path | None:
        if self.cfg.resume != "auto":
            return Path(self.cfg.resume) if self.cfg.resume else None
        found = latest_checkpoint(self.out)
        self.log.print(f"--resume auto: resuming from {found}" if found else f"--resume auto: no complete checkpoint in {self.out}, starting fresh")
        return found

    def _check_same(self, saved: dict, flags: tuple[str, ...]) -> None:
        now = dataclasses.asdict(self.cfg)

        def value(cfg: dict, flag: str) -> object:
            for key in flag.split("."):
                cfg = cfg[key]
            return cfg

        differ = [f for f in flags if value(now, f) != value(saved, f)]
        if differ:
            listed = ", ".join(f"--{f.replace('_', '-')} {value(saved, f)!r} (now {value(now, f)!r})" for f in differ)
            raise ConfigError(f"--resume {self.cfg.resume}: the checkpoint was trained with other shapes: {listed}")

    def _check_output_dir(self) -> bool:
        """A new run never mixes its metrics into an earlier run's: it stops, unless told to
        continue (--resume) or to start over (--overwrite). True when the earlier run is to be
        deleted, which happens only once the trainer's setup has succeeded."""
        if not (self.out / "metrics.jsonl").exists() or self.cfg.resume:
            return False
        if not self.cfg.overwrite:
            raise ConfigError(
                f"{self.out} already holds a run; pass another --output-dir, --resume auto "
                "to continue it, or --overwrite to delete it and start over"
            )
        return True

    # ---- checkpoints ---------------------------------------------------------------------------
    def restore(self, state: State) -> None:
        """Load the checkpoint chosen by `prepare` into the trainer's freshly built state."""
        if self.resume_from is None:
            return
        meta = load_train_state(self.resume_from, state.model, state.optimizer, state.scheduler, state.frozen)
        self.start_step = meta["step"]
        self.skipped_total, self.skipped_in_a_row = meta.get("skipped_total", 0), meta.get("skipped_in_a_row", 0)
        self.last_checkpoint = self.resume_from
        self.log.print(f"resumed from {self.resume_from} after step {self.start_step}")

    def save(self, trainer: Steps, name: str, step: int, resumable: bool, rng: dict | None = None) -> None:
        """Collective. `rng`: the random state to store instead of the current one (a dropped step's)."""
        state = trainer.state()
        meta = {"step": step, "config": dataclasses.asdict(self.cfg), "skipped_total": self.skipped_total,
                "skipped_in_a_row": self.skipped_in_a_row, **state.meta}
        save_checkpoint(
            state.model, state.tokenizer, self.out / name, state.dtype,
            *((state.optimizer, state.scheduler, meta, state.frozen, rng) if resumable else ()),
        )
        if resumable:
            self.last_checkpoint = self.out / name
            if self.world.is_main and self.cfg.keep_last:
                prune_checkpoints(self.out, self.cfg.keep_last)

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, trainer: Steps) -> bool:
        """Run the remaining steps. False when a signal stopped the run early (after a resumable
        checkpoint), True when it ran to the end."""
        cfg = self.cfg
        if self.replace_earlier_run and self.world.is_main:
            shutil.rmtree(self.out)
        dist.barrier()
        self.log.start(self.start_step)
        # An eval due at the resumed step was dropped with the later metrics: it runs again.
        resumed_at_eval = self.start_step > 0 and cfg.eval_every and self.start_step % cfg.eval_every == 0
        if trainer.has_eval and (self.start_step == 0 and self.eval_first or resumed_at_eval):
            self._eval(trainer, self.start_step)
        with self._catch_stop_signals():
            for step in range(self.start_step, self.steps):
                rng = rng_state()
                try:
                    metrics = trainer.step(step)
                except Abandoned as e:
                    if not e.agreed:
                        self._agree()  # the other ranks are at their gate
                    self._stop(trainer, step, rng, dropped=True)
                    return False
                metrics["train/skipped_steps"] = self.skipped_total
                if step % cfg.log_every == 0 or step == self.steps - 1:
                    self.log.scalars(step, metrics)
                self.log.advance(metrics[self.shown], metrics["time/step_s"])
                self._stop_if_stuck()
                done = step + 1
                stop = done < self.steps and self._agree()
                if stop:
                    self._stop(trainer, done, None, dropped=False)
                    return False
                if cfg.save_every and done % cfg.save_every == 0 and done < self.steps:
                    self.save(trainer, f"checkpoint-{done}", done, resumable=True)
                if trainer.has_eval and cfg.eval_every and done % cfg.eval_every == 0 and done < self.steps:
                    self._eval(trainer, done)
        if trainer.has_eval:
            self._eval(trainer, self.steps)
        self.save(trainer, "final", self.steps, resumable=False)
        if self.world.is_main:
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        self.log.print(f"done: {self.product} in {self.out / 'final'}, TensorBoard: tensorboard --logdir {self.out / 'tb'}")
        return True

    def _eval(self, trainer: Steps, step: int) -> None:
        self.last_eval = trainer.run_eval(step)

    def _stop(self, trainer: Steps, done: int, rng: dict | None, dropped: bool) -> None:
        """Checkpoint the last completed step (unless that checkpoint is the one resumed from) and say so."""
        path = self.out / f"checkpoint-{done}"
        written = "already there"
        if self.last_checkpoint != path:
            t0 = time.perf_counter()
            self.save(trainer, path.name, done, resumable=True, rng=rng)
            self.stop_save_seconds = time.perf_counter() - t0
            written = f"written in {self.stop_save_seconds:.1f} s"
        how = f": dropped step {done} (its weights had not changed);" if dropped else f" after step {done}:"
        self.log.print(f"stopped by signal{how} checkpoint in {path} ({written})")

    # ---- the non-finite guard and the skip limit ------------------------------------------------
    def count_skip(self, reason: str | None) -> None:
        """The trainer says, once per step, whether it skipped the step's update and why."""
        self.skipped_total += reason is not None
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if reason else 0
        if reason:
            self.skip_reason = reason

    def _stop_if_stuck(self) -> None:
        if self.skipped_in_a_row < self.cfg.max_skipped_steps:
            return
        last = self.last_checkpoint or "none yet (no checkpoint was written before the skips)"
        raise RunStopped(
            f"{self.skipped_in_a_row} steps in a row skipped ({self.skip_reason}); weights were left as they were. "
            f"Last good checkpoint: {last}"
        )

    # ---- stop signals --------------------------------------------------------------------------
    def gate(self) -> None:
        """Collective, where the weights are still those of the last completed step: a stop asked
        on any rank drops the step here, on every rank."""
        if self._agree():
            raise Abandoned(agreed=True)

    def interrupt(self) -> None:
        """Local, for work without collectives (the rollout): a stop asked here drops the step now."""
        if self.signals:
            raise Abandoned(agreed=False)

    def _agree(self) -> bool:
        flag = torch.tensor([float(bool(self.signals))])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @contextlib.contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT ask for a stop; a second SIGINT exits at once (a SIGTERM after a SIGINT
        does not: torchrun sends one to its workers after a Ctrl-C)."""

        def ask(signum: int, frame) -> None:
            if signum == signal.SIGINT and signal.SIGINT in self.signals:
                os._exit(128 + signum)
            if not self.signals:
                print(f"rank {self.world.rank}: {signal.Signals(signum).name}: stopping with a checkpoint "
                      "(Ctrl-C again: exit now)", file=sys.stderr, flush=True)
            self.signals.append(signum)

        previous = {s: signal.signal(s, ask) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


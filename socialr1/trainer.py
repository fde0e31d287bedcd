"""The GRPO loop. Per step: sample prompts -> roll out G completions each -> SIP rewards ->
group-relative advantages -> old/reference log-probs -> clipped-surrogate update with k3 KL."""

import contextlib
import copy
import dataclasses
import functools
import gc
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import decoder
from socialr1 import distributed as D
from socialr1 import evalsets
from socialr1.checkpoint import latest_checkpoint, load_train_state, prune_checkpoints, read_train_meta, save_checkpoint
from socialr1.config import ConfigError, OptimConfig, TrainConfig
from socialr1.data import load_items
from socialr1.evaluate import evaluate
from socialr1.grpo import group_advantages, microbatch_weight, zero_std_fraction
from socialr1.items import MCQItem
from socialr1.metrics import RunLog, mean_std
from socialr1.models import build_tiny, load_pretrained, stop_token_ids
from socialr1.plots import plot_curves
from socialr1.policy import LossSettings, Policy
from socialr1.preflight import check_inputs
from socialr1.prompts import encode_prompts, prefilled, user_message
from socialr1.rewards import SIPReward
from socialr1.rollout import Engine, Rollout, SamplingParams, sample
from socialr1.synthetic import generate_items
from socialr1.warmstart import gold_completions, warm_start

EVAL_SEED_OFFSET = 10_000  # generated eval items come from a seed training never uses


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the peak lr at optimizer step s: linear warmup, then the chosen decay."""

    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        progress = (s - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
        if cfg.schedule == "linear":
            return 1.0 - progress
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


class RunStopped(Exception):
    """The run cannot go on (e.g. too many skipped steps); the message says why and what to resume from."""


# Flags whose change gives other parameter shapes, so a checkpoint of one run cannot resume another.
SHAPE_FLAGS = ("model.name_or_path", "model.tiny", "model.tiny_hidden_size", "model.tiny_layers", "model.tiny_heads",
               "model.tiny_vocab_size")
TINY_VOCAB_FLAGS = ("data.synthetic", "data.path", "seed")  # the tiny tokenizer is trained on the data


class Trainer:
    """`__init__` only wires things together; `setup()` (called by `train()`) does the expensive
    work: data, model, warm start, sharding, resume."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.world = D.init_world(cfg.device)
        self.out = Path(cfg.output_dir)
        self.log = RunLog(self.out, cfg.steps, enabled=self.world.is_main)
        on_cuda = self.world.device.type == "cuda"
        self.dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and on_cuda) else torch.float32
        self.policy = self.ref = self.opt = self.sched = None
        self.start_step = self.skipped_total = self.skipped_in_a_row = 0
        self.last_checkpoint: Path | None = None
        self.stop_signals: list[int] = []  # signals received; the ranks agree on stopping after each step
        self.ready = False

    def setup(self) -> None:
        """Cheap checks of every input first, then load, warm start, shard and resume. Idempotent."""
        if self.ready:
            return
        cfg = self.cfg
        if cfg.rollout.prompts_per_step % self.world.size:
            raise ConfigError(f"--rollout.prompts-per-step {cfg.rollout.prompts_per_step} must divide by the {self.world.size} ranks")
        check_inputs(cfg)
        resume = self._resume_dir()
        meta = read_train_meta(resume) if resume else None
        if meta:
            self._check_same_shapes(meta["config"])
        self.replace_earlier_run = self._check_output_dir()

        self.items, self.eval_items = self._load_data()
        lm, self.tokenizer = D.in_turn(self._load_model)
        self.pad_id = self.tokenizer.pad_token_id
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.prefill = prefilled(self.tokenizer, cfg.sip)
        self.items, self.prompts = self._encode(self.items, "training")
        self.eval_items, self.eval_prompts = self._encode(self.eval_items, "eval")
        if not self.items:
            raise ConfigError(f"no training item fits in --data.max-prompt-tokens {cfg.data.max_prompt_tokens}")
        if cfg.warmstart.steps and not meta:
            random_answers = cfg.seed if cfg.warmstart.answers == "random" else None
            targets = gold_completions(self.tokenizer, self.items, cfg.sip, self.prefill, random_answers)
            losses = warm_start(lm, self.prompts, targets, self.pad_id, cfg.warmstart, cfg.seed, self.world.is_main)
            self.log.print(f"warm start: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")

        self.reward = SIPReward(
            self.tokenizer, cfg.reward, total_steps=cfg.steps, fmt=cfg.sip, prefix=self.prefill, device=self.world.device
        )
        self.log.print(self.reward.describe())
        self.features = self.reward.encode_items(self.items).to(self.world.device)
        # Eval reads only format and accuracy: the same formula, without calls to a judge or reward model.
        offline = dataclasses.replace(cfg.reward, structure="lexical", content="lexical")
        self.eval_reward = SIPReward(self.tokenizer, offline, total_steps=cfg.steps, fmt=cfg.sip, prefix=self.prefill)
        self.eval_features = self.eval_reward.encode_items(self.eval_items).to(self.world.device) if self.eval_items else None
        if cfg.model.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = self._shard(lm)
        self.ref = self._frozen_copy(self.policy) if cfg.grpo.beta != 0 else None
        self.opt = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        total_updates = cfg.steps * cfg.grpo.num_iterations
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.optim, total_updates))
        self.loss_settings = LossSettings(
            cfg.grpo.beta, cfg.grpo.eps_low, cfg.grpo.eps_high, cfg.grpo.loss_type,
            cfg.rollout.temperature, cfg.rollout.max_new_tokens,
        )
        r = cfg.rollout
        self.sampling = SamplingParams(
            r.max_new_tokens, r.temperature, r.top_p, r.top_k, tuple(self.stop_ids), tuple(r.stop_strings), r.check_every
        )
        self.engine = Engine(compile=r.compile, log=self.log.print)
        # Sampling differs per rank; everything above (model init, warm start) is identical.
        torch.manual_seed(cfg.seed * 1_000 + self.world.rank)
        if resume:
            self._resume(resume)
        self.ready = True

    # ---- setup -------------------------------------------------------------------------------
    def _check_output_dir(self) -> bool:
        """A new run never mixes its metrics into an earlier run's: it stops, unless told to
        continue (--resume) or to start over (--overwrite). True when the earlier run is to be
        deleted, which train() does only once setup has succeeded."""
        if not (self.out / "metrics.jsonl").exists() or self.cfg.resume:
            return False
        if not self.cfg.overwrite:
            raise ConfigError(
                f"{self.out} already holds a run; pass another --output-dir, --resume auto "
                "to continue it, or --overwrite to delete it and start over"
            )
        return True

    def _resume_dir(self) -> Path | None:
        if self.cfg.resume != "auto":
            return Path(self.cfg.resume) if self.cfg.resume else None
        found = latest_checkpoint(self.out)
        self.log.print(f"--resume auto: resuming from {found}" if found else f"--resume auto: no complete checkpoint in {self.out}, starting fresh")
        return found

    def _check_same_shapes(self, saved: dict) -> None:
        """Name the flags whose change makes the checkpoint's tensors another shape."""
        now = dataclasses.asdict(self.cfg)
        flags = SHAPE_FLAGS + (TINY_VOCAB_FLAGS if self.cfg.model.tiny else ())

        def value(cfg: dict, flag: str) -> object:
            for key in flag.split("."):
                cfg = cfg[key]
            return cfg

        differ = [f for f in flags if value(now, f) != value(saved, f)]
        if differ:
            listed = ", ".join(f"--{f.replace('_', '-')} {value(saved, f)!r} (now {value(now, f)!r})" for f in differ)
            raise ConfigError(f"--resume {self.cfg.resume}: the checkpoint was trained with other shapes: {listed}")

    def _load_data(self) -> tuple[list[MCQItem], list[MCQItem]]:
        d = self.cfg.data
        generate = functools.partial(generate_items, containers=d.synthetic_containers, fixed_options=d.synthetic_fixed_options)
        train = generate(d.synthetic, seed=self.cfg.seed) if d.synthetic else load_items(d.path, d.fields, d.split)
        if d.eval_path:
            evals = evalsets.eval_items(d.eval_path, d.fields)
        elif d.eval_synthetic:
            seen = {(it.story, it.question) for it in train}
            fresh = generate(2 * d.eval_synthetic, seed=self.cfg.seed + EVAL_SEED_OFFSET)
            evals = [it for it in fresh if (it.story, it.question) not in seen][: d.eval_synthetic]
        else:
            evals = []
        return train, evals[: d.eval_limit]

    def _load_model(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        m = self.cfg.model
        if m.tiny:
            corpus = [user_message(it, self.cfg.sip) for it in self.items]
            corpus += [self.cfg.sip.render(it.gold_stages, it.answer_letter) for it in self.items if it.gold_stages]
            lm, tokenizer = build_tiny(m, corpus, self.cfg.seed)
        else:
            lm, tokenizer = load_pretrained(m, self.world.device, self.cfg.seed)
        return lm.to(self.world.device), tokenizer

    def _encode(self, items: list[MCQItem], what: str) -> tuple[list[MCQItem], list[list[int]]]:
        """Tokenise prompts once; drop (and report) items whose prompt is too long."""
        prompts = encode_prompts(self.tokenizer, items, self.cfg.sip)
        keep = [i for i, p in enumerate(prompts) if len(p) <= self.cfg.data.max_prompt_tokens]
        if len(keep) < len(items):
            self.log.print(f"{what}: skipped {len(items) - len(keep)} of {len(items)} items longer than --data.max-prompt-tokens")
        return [items[i] for i in keep], [prompts[i] for i in keep]

    @property
    def _param_dtype(self) -> torch.dtype | None:
        return self.dtype if self.dtype != torch.float32 else None

    def _shard(self, lm: PreTrainedModel) -> Policy:
        policy = Policy(lm)
        D.shard(policy, lm.model.layers, self._param_dtype, Policy.FORWARD_METHODS)
        return policy

    def _frozen_copy(self, policy: Policy) -> Policy:
        """The reference model: the policy's weights, built shard by shard (no full copy)."""
        config = copy.deepcopy(policy.lm.config)
        return D.sharded_copy(
            policy, lambda: Policy(type(policy.lm)(config)), lambda p: p.lm.model.layers, self._param_dtype,
            Policy.FORWARD_METHODS,
        )

    # ---- one step ----------------------------------------------------------------------------
    def prompt_indices(self, step: int) -> list[int]:
        """This rank's share of the step's prompts: a slice of a seeded permutation per epoch, so
        the global batch is the same whatever the number of ranks."""
        per_step = self.cfg.rollout.prompts_per_step
        per_rank = per_step // self.world.size
        first = step * per_step + self.world.rank * per_rank
        return [self._epoch_order(k // len(self.items))[k % len(self.items)] for k in range(first, first + per_rank)]

    @functools.lru_cache(maxsize=2)
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.cfg.seed + epoch).shuffle(order)
        return order

    def rollout(self, step: int) -> Rollout:
        index = self.prompt_indices(step)
        self.policy.eval()
        with D.gathered(self.policy):
            return sample(
                self.policy.lm, [self.prompts[i] for i in index], index, self.cfg.rollout.group_size, self.sampling,
                self.pad_id, engine=self.engine, tokenizer=self.tokenizer,
            )

    def prompt_group(self, batch: Rollout) -> int:
        """G when the training passes can compute each prompt once (--grpo.share-prompt): micro-batches
        hold whole groups and each group's rows share one prompt (one host read per step); else 1."""
        g, m = self.cfg.rollout.group_size, self.cfg.grpo.micro_batch_size
        if not self.cfg.grpo.share_prompt or g == 1 or m % g or len(batch) % g or decoder.unsupported(self.policy.lm):
            return 1
        grouped = batch.prompt_ids.view(-1, g, batch.prompt_ids.shape[1])
        return g if bool((grouped == grouped[:, :1]).all()) else 1

    @torch.no_grad()
    def logprobs(self, model: Policy, batch: Rollout, group: int = 1) -> torch.Tensor:
        """[N, C] log-probs of the completions under `model`, micro-batch by micro-batch."""
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=self.world.device)
        m = self.cfg.grpo.micro_batch_size
        for start, part in zip(range(0, len(batch), m), batch.split(m)):
            logp, _ = model.logprobs(part, self.cfg.rollout.temperature, group)
            out[start : start + m, : logp.shape[1]] = logp
        return out

    def update(self, batch: Rollout, advantages: torch.Tensor, global_tokens: torch.Tensor | None = None) -> dict[str, float]:
        """num_iterations optimizer steps on this rank's rollouts. advantages: [N]; global_tokens:
        completion tokens over all ranks (summed here when not given). The micro-batch loop keeps
        its sums on the device; they are read once, at the end."""
        g, m = self.cfg.grpo, self.cfg.grpo.micro_batch_size
        self.policy.train()
        t0 = time.perf_counter()
        group = self.prompt_group(batch)
        old = self.logprobs(self.policy, batch, group) if g.num_iterations > 1 else None
        ref = self.logprobs(self.ref, batch, group) if self.ref is not None else None
        t1 = time.perf_counter()
        if global_tokens is None:
            global_tokens = D.all_reduce_sum(batch.completion_mask.sum().float())
        global_tokens = global_tokens.to(self.world.device).clamp(min=1)
        global_seqs = len(batch) * self.world.size
        parts = batch.split(m)
        sums = torch.zeros(6, dtype=torch.float64, device=self.world.device)  # loss, kl, low, high, region, entropy
        skipped = 0
        for _ in range(g.num_iterations):
            self.opt.zero_grad(set_to_none=True)
            local_loss = torch.zeros((), device=self.world.device)
            for i, (start, part) in enumerate(zip(range(0, len(batch), m), parts)):
                if g.grad_sync == "last":
                    self.policy.set_requires_gradient_sync(i == len(parts) - 1)
                width = part.completion_ids.shape[1]
                loss, stats = self.policy.loss(
                    part, advantages[start : start + m],
                    None if old is None else old[start : start + m, :width],
                    None if ref is None else ref[start : start + m, :width],
                    self.loss_settings, group,
                )
                tokens = part.completion_mask.sum()
                w = microbatch_weight(g.loss_type, len(part), tokens, global_seqs, global_tokens, len(parts), self.world.size)
                (loss * w).backward()
                local_loss += loss.detach() * w
                sums += torch.stack(
                    [loss.detach() * w / self.world.size]
                    + [stats[k] * tokens for k in ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio", "entropy")]
                ).double()
            grad_norm = self._clip()
            skipped += self._guarded_step(local_loss, grad_norm)
            self.sched.step()
        totals = torch.cat([D.all_reduce_sum(sums) / g.num_iterations, grad_norm.double()[None], global_tokens.double()[None]])
        loss, *weighted, grad_norm, tokens = totals.tolist()
        names = ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy")
        out = {"loss": loss, "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0], "skipped": skipped,
               "time/logprobs_s": t1 - t0, "time/update_s": time.perf_counter() - t1}
        out.update({k: v / tokens for k, v in zip(names, weighted)})
        return out

    def _guarded_step(self, local_loss: torch.Tensor, grad_norm: torch.Tensor) -> int:
        """Collective: the optimizer steps unless some rank's loss or the global grad norm is not
        finite; then every rank skips it (weights and optimizer state unchanged). Returns 1 if skipped.
        Its decision is the update's one host read per optimizer step."""
        finite = (torch.isfinite(local_loss) & torch.isfinite(grad_norm)).float().cpu()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item():
            self.opt.step()
            return 0
        self.opt.zero_grad(set_to_none=True)
        return 1

    def _clip(self) -> torch.Tensor:
        params = [p for p in self.policy.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        return D.full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        batch = self.rollout(step)
        t1 = time.perf_counter()
        scores = self.reward.score(batch.completion_ids, batch.completion_mask, self.features, batch.item_index, step)
        scores, lengths, ended = self._gather_step(batch, scores)
        failed = scores.pop("failed", None)  # [N_global] 1 where an external reward service failed
        failed_frac = None if failed is None else failed.mean().item()
        adv = group_advantages(scores["total"], self.cfg.rollout.group_size, self.cfg.grpo.scale_rewards)
        t2 = time.perf_counter()
        n = len(batch)
        if failed_frac is not None and failed_frac > self.cfg.max_reward_failure_rate:
            metrics, reason = {}, f"reward services failed on more than --max-reward-failure-rate {self.cfg.max_reward_failure_rate}"
        else:
            metrics = self.update(batch, adv[self.world.rank * n : (self.world.rank + 1) * n].to(self.world.device), lengths.sum())
            reason = "non-finite loss or grad norm" if metrics.pop("skipped") else None
        self._count_skip(reason)
        metrics["train/skipped_steps"] = self.skipped_total
        if failed_frac is not None:
            metrics["reward/failed_frac"] = failed_frac
        t3 = time.perf_counter()
        metrics.update(self._rollout_metrics(lengths, ended, scores))
        metrics.update({"time/generation_s": t1 - t0, "time/reward_s": t2 - t1, "time/step_s": t3 - t0})
        metrics["throughput/tokens_per_s"] = metrics["completion/tokens"] / (t3 - t0)
        if self.world.device.type == "cuda":
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if self.cfg.sample_every and step % self.cfg.sample_every == 0:
            self._log_samples(step, batch, scores)
        return metrics

    def _gather_step(self, batch: Rollout, scores: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Every rank's reward components, completion lengths and whether each completion ended
        (rather than hit max_new_tokens), [N_global] each on the host: one stacked all-gather."""
        lengths = batch.completion_mask.sum(1)
        last = batch.completion_ids.gather(1, lengths[:, None] - 1).squeeze(1)
        ended = torch.isin(last, torch.tensor(self.stop_ids, device=last.device)) | (lengths < self.cfg.rollout.max_new_tokens)
        local = torch.stack([v.float() for v in scores.values()] + [lengths.float(), ended.float()], dim=1)  # [N, K + 2]
        table = D.all_gather_cat(local).cpu().unbind(1)
        return dict(zip(scores, table)), table[-2], table[-1]

    def _count_skip(self, reason: str | None) -> None:
        self.skipped_total += reason is not None
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if reason else 0
        self.skip_reason = reason

    def _rollout_metrics(self, lengths: torch.Tensor, ended: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict[str, float]:
        out = {"completion/tokens": lengths.sum().item(), "completion/length_mean": lengths.mean().item(),
               "completion/length_min": lengths.min().item(), "completion/length_max": lengths.max().item(),
               "completion/clipped_frac": 1.0 - ended.mean().item(),
               "reward/zero_std_frac": zero_std_fraction(scores["total"], self.cfg.rollout.group_size)}
        for name, values in scores.items():
            out.update(mean_std(f"reward/{name}", values))
        for name in ("judge", "content"):  # per-step counts, over all ranks (scores are gathered)
            if f"{name}_failed" in scores:
                out[f"reward/{name}_failures"] = scores[f"{name}_failed"].sum().item()
        return out

    def _log_samples(self, step: int, batch: Rollout, scores: dict[str, torch.Tensor]) -> None:
        g = self.cfg.rollout.group_size
        for row in range(0, min(len(batch), 2 * g), g):  # the first sample of two groups
            item = self.items[int(batch.item_index[row])]
            text = self.tokenizer.decode(batch.completion_ids[row][batch.completion_mask[row].bool()])
            head = f"Q: {item.question}  gold: {item.answer_letter}  reward: {scores['total'][row].item():.3f}"
            judge = self.reward.judge_replies[row] if row < len(self.reward.judge_replies) else ""
            self.log.text(step, f"samples/{row // g}", f"{head}\n\n{text}" + (f"\n\njudge: {judge}" if judge else ""))

    # ---- the run -----------------------------------------------------------------------------
    def run_eval(self, step: int) -> dict[str, float]:
        r = self.cfg.rollout
        self.policy.eval()
        with D.gathered(self.policy):
            result = evaluate(
                self.policy.lm, self.eval_items, self.eval_prompts, self.eval_reward,
                self.eval_features, r.prompts_per_step * r.group_size // self.world.size,
                r.max_new_tokens, self.pad_id, self.stop_ids,
            )
        result["chance"] = sum(1 / len(it.options) for it in self.eval_items) / len(self.eval_items)
        self.log.scalars(step, {f"eval/{k}": v for k, v in result.items()})
        per_type = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in result.items() if k.startswith("accuracy/"))
        self.log.print(f"step {step}: eval accuracy {result['accuracy']:.3f}, format {result['format']:.3f} on {int(result['n'])} items ({per_type})")
        return result

    def _resume(self, directory: Path) -> None:
        meta = load_train_state(directory, self.policy, self.opt, self.sched)
        self.start_step, self.skipped_total = meta["step"], meta["skipped_total"]
        self.skipped_in_a_row = meta["skipped_in_a_row"]
        self.last_checkpoint = directory
        self.log.print(f"resumed from {directory} after step {self.start_step}")

    def save(self, name: str, step: int, resumable: bool) -> None:
        opt, sched = (self.opt, self.sched) if resumable else (None, None)
        # Data order and the reward curriculum are functions of (seed, step); the TensorBoard step is the step.
        meta = {"step": step, "config": dataclasses.asdict(self.cfg), "skipped_total": self.skipped_total,
                "skipped_in_a_row": self.skipped_in_a_row, "prompts_seen": step * self.cfg.rollout.prompts_per_step}
        save_checkpoint(self.policy, self.tokenizer, self.out / name, self.dtype, opt, sched, meta)
        if resumable:
            self.last_checkpoint = self.out / name
            if self.world.is_main and self.cfg.keep_last:
                prune_checkpoints(self.out, self.cfg.keep_last)

    def train(self) -> bool:
        """Set up, then run the remaining steps. False when a signal stopped the run early (after a
        resumable checkpoint), True when it ran to the end."""
        self.setup()
        cfg = self.cfg
        if self.replace_earlier_run and self.world.is_main:
            shutil.rmtree(self.out)
        dist.barrier()
        self.log.start(self.start_step)
        if self.eval_items and (self.start_step == 0 or cfg.eval_every and self.start_step % cfg.eval_every == 0):
            self.run_eval(self.start_step)  # an eval due at the resumed step was dropped with the later metrics
        with self._catch_stop_signals():
            for step in range(self.start_step, cfg.steps):
                metrics = self.step(step)
                if step % cfg.log_every == 0 or step == cfg.steps - 1:
                    self.log.scalars(step, metrics)
                self.log.advance(metrics["reward/total/mean"], metrics["time/step_s"])
                self._stop_if_stuck()
                done = step + 1
                stop = done < cfg.steps and self._stop_agreed()
                if (cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps) or stop:
                    self.save(f"checkpoint-{done}", done, resumable=True)
                if stop:
                    self.log.print(f"stopped by signal after step {done}: checkpoint in {self.out / f'checkpoint-{done}'}")
                    return False
                if self.eval_items and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                    self.run_eval(done)
        if self.eval_items:
            self.run_eval(cfg.steps)
        self.save("final", cfg.steps, resumable=False)
        if self.world.is_main:
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")
        self.log.print(f"done: checkpoint in {self.out / 'final'}, TensorBoard: tensorboard --logdir {self.out / 'tb'}")
        return True

    # ---- stopping ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _catch_stop_signals(self):
        """SIGTERM / SIGINT only ask to stop after the current step; a second SIGINT exits at once
        (a SIGTERM after a SIGINT does not: torchrun sends one to its workers after a Ctrl-C)."""

        def ask(signum: int, frame) -> None:
            if signum == signal.SIGINT and signal.SIGINT in self.stop_signals:
                os._exit(128 + signum)
            if not self.stop_signals:
                print(f"rank {self.world.rank}: {signal.Signals(signum).name}: stopping after this step "
                      "with a checkpoint (Ctrl-C again: exit now)", file=sys.stderr, flush=True)
            self.stop_signals.append(signum)

        previous = {s: signal.signal(s, ask) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_agreed(self) -> bool:
        """Collective: a signal on any rank stops every rank after the same step."""
        flag = torch.tensor([float(bool(self.stop_signals))])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _stop_if_stuck(self) -> None:
        if self.skipped_in_a_row < self.cfg.max_skipped_steps:
            return
        last = self.last_checkpoint or "none yet (no checkpoint was written before the skips)"
        raise RunStopped(
            f"{self.skipped_in_a_row} steps in a row skipped ({self.skip_reason}); weights were left as they were. "
            f"Last good checkpoint: {last}"
        )

    def close(self) -> None:
        self.log.close()
        # Free the FSDP-sharded models and the optimizer while the interpreter is fully alive.
        # Left to the garbage collection at interpreter shutdown, a non-main gloo rank sometimes aborted there
        # ("terminate called without an active exception"): 4 of 42 stress runs of tests/dist_update.py on 2 ranks,
        # against 0 of 60 with this release.
        self.policy = self.ref = self.opt = self.sched = None
        gc.collect()
        D.close_world(self.world)

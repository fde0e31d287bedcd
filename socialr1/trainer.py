"""The GRPO loop. Per step: sample prompts -> roll out G completions each -> SIP rewards ->
group-relative advantages -> old/reference log-probs -> clipped-surrogate update with k3 KL."""

import copy
import dataclasses
import functools
import gc
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import decoder
from socialr1 import distributed as D
from socialr1 import evalsets
from socialr1.config import ConfigError, TrainConfig, shape_flags
from socialr1.data import load_items, rank_share
from socialr1.evalsets.overlap import warning as overlap_warning
from socialr1.evaluate import evaluate
from socialr1.grpo import group_advantages, microbatch_weight, zero_std_fraction
from socialr1.items import MCQItem
from socialr1.metrics import RunLog, mean_std
from socialr1.models import build_tiny, checkpoint_activations, compute_dtype, load_pretrained, quiet_loading, stop_token_ids
from socialr1.optim import build_optimizer, clip_grad_norm, guarded_step
from socialr1.policy import LossSettings, Policy
from socialr1.preflight import check_inputs
from socialr1.prompts import encode_prompts, prefilled, user_message
from socialr1.rewards import SIPReward
from socialr1.rollout import Engine, Rollout, SamplingParams, sample
from socialr1.run import Run, State
from socialr1.synthetic import generate_items
from socialr1.warmstart import gold_completions, warm_start

EVAL_SEED_OFFSET = 10_000  # generated eval items come from a seed training never uses


class Trainer:
    """The GRPO algorithm: build its parts, then per step rollout, reward, advantages, log-probs and
    update, and greedy eval. `__init__` only wires; `setup()` (called by `train()`) checks every
    input cheaply, then loads, warm starts, shards and resumes. The run around the steps (output dir,
    checkpoints, stop signals, skip guard, progress) is socialr1/run.py's `Run`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.world = D.init_world(cfg.device)
        self.log = RunLog(Path(cfg.output_dir), cfg.steps, enabled=self.world.is_main)
        self.run = Run(cfg, self.world, self.log, cfg.steps, shown="reward/total/mean", product="checkpoint", eval_first=True)
        self.dtype = compute_dtype(cfg.model.dtype, self.world.device)
        self.policy = self.ref = self.opt = self.sched = None
        self.ready = False

    def setup(self) -> None:
        """Cheap checks of every input first, then load, warm start, shard and resume. Idempotent."""
        if self.ready:
            return
        cfg = self.cfg
        if cfg.rollout.prompts_per_step % self.world.size:
            raise ConfigError(f"--rollout.prompts-per-step {cfg.rollout.prompts_per_step} must divide by the {self.world.size} ranks")
        check_inputs(cfg)
        meta = self.run.prepare(shape_flags(cfg.model))
        quiet_loading()

        self.items, self.eval_items = self._load_data()
        self._warn_benchmark_overlap()
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
        # The KL reference is the policy GRPO step 0 started from. Rebuilt at a resume from the weights
        # read or initialised, it is right only when no warm start moved them: then checkpoints carry it.
        self.reference_in_checkpoints = bool(cfg.warmstart.steps) if meta is None else "reference" in meta.get("frozen", ())

        self.reward = SIPReward(
            self.tokenizer, cfg.reward, total_steps=cfg.steps, fmt=cfg.sip, prefix=self.prefill, device=self.world.device
        )
        self.features = self.reward.encode_items(self.items).to(self.world.device)
        # Eval reads only format and accuracy: the same formula, without calls to a judge or reward model.
        offline = dataclasses.replace(cfg.reward, structure="lexical", content="lexical")
        self.eval_reward = SIPReward(self.tokenizer, offline, total_steps=cfg.steps, fmt=cfg.sip, prefix=self.prefill)
        self.eval_features = self.eval_reward.encode_items(self.eval_items).to(self.world.device) if self.eval_items else None
        if cfg.model.activation_checkpointing:
            checkpoint_activations(lm)
        self.policy = self._shard(lm)
        self.ref = self._frozen_copy(self.policy) if cfg.grpo.beta != 0 else None
        self.opt, self.sched = build_optimizer(self.policy.parameters(), cfg.optim, cfg.steps * cfg.grpo.num_iterations)
        self.loss_settings = LossSettings(
            cfg.grpo.beta, cfg.grpo.eps_low, cfg.grpo.eps_high, cfg.grpo.loss_type,
            cfg.rollout.temperature, cfg.rollout.max_new_tokens,
        )
        r = cfg.rollout
        self.sampling = SamplingParams(
            r.max_new_tokens, r.temperature, r.top_p, r.top_k, tuple(self.stop_ids), tuple(r.stop_strings), r.check_every
        )
        self.engine = Engine(compile=r.compile, log=self.log.print, interrupt=self.run.interrupt)
        # Sampling differs per rank; everything above (model init, warm start) is identical.
        torch.manual_seed(cfg.seed * 1_000 + self.world.rank)
        self.run.restore(self.state())
        self._print_summary()
        self.ready = True

    def state(self) -> State:
        frozen = {"reference": self.ref} if self.ref is not None and self.reference_in_checkpoints else {}
        return State(self.policy, self.tokenizer, self.dtype, self.opt, self.sched, frozen)

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_items)

    # ---- setup -------------------------------------------------------------------------------
    def _warn_benchmark_overlap(self) -> None:
        """Training on an evaluation benchmark is allowed, but never silent (rank 0 reads the benchmarks)."""
        if self.world.is_main and (text := overlap_warning(evalsets.benchmark_overlap(self.items), len(self.items))):
            self.log.print(text)

    def _prompt_sharing(self) -> str:
        """Whether the training passes compute each prompt once per group, and if not, why."""
        g, m = self.cfg.rollout.group_size, self.cfg.grpo.micro_batch_size
        if not self.cfg.grpo.share_prompt:
            return "off (--grpo.share-prompt false)"
        if m % g:
            return (f"OFF: --grpo.micro-batch-size {m} is not a multiple of --rollout.group-size {g}, so every row "
                    f"recomputes its prompt (pass --grpo.micro-batch-size {g * max(1, m // g)})")
        reason = decoder.unsupported(self.policy.lm)
        return f"OFF: {reason}" if reason else "on"

    def _print_summary(self) -> None:
        cfg, w = self.cfg, self.world
        params = sum(p.numel() for p in self.policy.parameters())  # a DTensor counts its global size
        per_rank = cfg.rollout.prompts_per_step // w.size
        lines = [
            f"run: {len(self.items)} training items, {len(self.eval_items)} eval items; {w.size} rank(s) on "
            f"{w.device.type}, {str(self.dtype).removeprefix('torch.')} compute, {params / 1e6:.4g}M parameters",
            f"per step: {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} samples ({per_rank} prompts, "
            f"{per_rank * cfg.rollout.group_size} completions per rank, micro-batches of {cfg.grpo.micro_batch_size}), "
            f"up to {cfg.rollout.max_new_tokens} new tokens; {cfg.steps} steps from step {self.run.start_step}",
            f"prompt once per group: {self._prompt_sharing()}",
            self.reward.describe(),
        ]
        self.log.print("\n".join(lines))

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
        """This rank's share of the step's prompts (socialr1.data.rank_share)."""
        r, w = self.cfg.rollout, self.world
        return rank_share(len(self.items), r.prompts_per_step, step, w.rank, w.size, self.cfg.seed)

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
        """[N, C] log-probs of the completions under `model`, micro-batch by micro-batch (a stop
        asked meanwhile drops the step before the next one)."""
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32, device=self.world.device)
        m = self.cfg.grpo.micro_batch_size
        for start, part in zip(range(0, len(batch), m), batch.split(m)):
            self.run.gate()
            logp, _ = model.logprobs(part, self.cfg.rollout.temperature, group)
            out[start : start + m, : logp.shape[1]] = logp
        return out

    def update(self, batch: Rollout, advantages: torch.Tensor, global_tokens: torch.Tensor | None = None) -> dict[str, float]:
        """num_iterations optimizer steps on this rank's rollouts. advantages: [N]; global_tokens:
        completion tokens over all ranks (summed here when not given). The micro-batch loop keeps
        its sums on the device; they are read once, at the end. Until the first optimizer step, a
        stop asked on any rank drops the step before the next micro-batch."""
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
        for iteration in range(g.num_iterations):
            self.opt.zero_grad(set_to_none=True)
            local_loss = torch.zeros((), device=self.world.device)
            for i, (start, part) in enumerate(zip(range(0, len(batch), m), parts)):
                if iteration == 0:
                    self.run.gate()
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
            grad_norm = clip_grad_norm(self.policy, self.cfg.optim.grad_clip)
            skipped += guarded_step(self.opt, local_loss, grad_norm)
            self.sched.step()
        totals = torch.cat([D.all_reduce_sum(sums) / g.num_iterations, grad_norm.double()[None], global_tokens.double()[None]])
        loss, *weighted, grad_norm, tokens = totals.tolist()
        names = ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "entropy")
        out = {"loss": loss, "grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0], "skipped": skipped,
               "time/logprobs_s": t1 - t0, "time/update_s": time.perf_counter() - t1}
        out.update({k: v / tokens for k, v in zip(names, weighted)})
        return out

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        batch = self.rollout(step)
        self.run.interrupt()  # before the reward services are called, if a stop came at the rollout's end
        t1 = time.perf_counter()
        scores = self.reward.score(batch.completion_ids, batch.completion_mask, self.features, batch.item_index, step)
        self.run.gate()  # the step's first collective: a stop asked during rollout or reward drops the step
        scores, lengths, ended = self._gather_step(batch, scores)
        failed = scores.pop("failed", None)  # [N_global] 1 where an external reward service failed
        failed_frac = None if failed is None else failed.mean().item()
        valid = None if failed is None else failed == 0  # a failed sample neither rewards nor punishes: advantage 0
        adv = group_advantages(scores["total"], self.cfg.rollout.group_size, self.cfg.grpo.scale_rewards, valid)
        t2 = time.perf_counter()
        n = len(batch)
        if failed_frac is not None and failed_frac > self.cfg.max_reward_failure_rate:
            metrics, reason = {}, f"reward services failed on more than --max-reward-failure-rate {self.cfg.max_reward_failure_rate}"
        else:
            metrics = self.update(batch, adv[self.world.rank * n : (self.world.rank + 1) * n].to(self.world.device), lengths.sum())
            reason = "non-finite loss or grad norm" if metrics.pop("skipped") else None
        self.run.count_skip(reason)
        if failed is not None:
            metrics["reward/failed_frac"] = failed_frac
            metrics["reward/dropped"] = failed.sum().item()  # samples left out of their group's advantages
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

    # ---- eval --------------------------------------------------------------------------------
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

    def train(self) -> bool:
        """Set up, then run the remaining steps (socialr1/run.py). False when a signal stopped the
        run early (after a resumable checkpoint), True when it ran to the end."""
        self.setup()
        return self.run.train(self)

    def close(self) -> None:
        self.log.close()
        # Free the FSDP-sharded models and the optimizer while the interpreter is fully alive.
        # Left to the garbage collection at interpreter shutdown, a non-main gloo rank sometimes aborted there
        # ("terminate called without an active exception"): 4 of 42 stress runs of tests/dist_update.py on 2 ranks,
        # against 0 of 60 with this release.
        self.policy = self.ref = self.opt = self.sched = None
        gc.collect()
        D.close_world(self.world)

"""Pairwise (Bradley-Terry) reward-model training on the GRPO run's stack: FSDP2, AdamW with
warmup and decay, atomic Hugging Face checkpoints with resumable state, TensorBoard.

Per step: this rank's share of the step's pairs -> micro-batches by token budget, chosen and
rejected of a pair in the same forward -> loss -log sigmoid(r_c - r_r - margin) + center * r^2
-> gradients accumulated over micro-batches -> one optimizer step."""

import copy
import gc
import math
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import distributed as D
from socialr1.config import ConfigError, shape_flags
from socialr1.data import rank_share
from socialr1.metrics import RunLog, mean_std
from socialr1.models import build_tiny, checkpoint_activations, compute_dtype, load_pretrained, quiet_loading
from socialr1.optim import build_optimizer, clip_grad_norm, guarded_step
from socialr1.preflight import check_model_dir, check_writable
from socialr1.reward_model import inputs
from socialr1.reward_model.config import LossConfig, RMConfig
from socialr1.reward_model.pairs import EVAL_SEED_OFFSET, Pair, generate_pairs, load_pairs, synthetic_splits
from socialr1.reward_model.reader import learn_to_read
from socialr1.rewards.content import rm_template
from socialr1.run import Run, State


def classifier_from_causal(lm: PreTrainedModel) -> PreTrainedModel:
    """The sequence classifier (one label) of the same architecture, holding the causal LM's
    decoder weights; its LM head is dropped and its score head left for the caller to set."""
    config = copy.deepcopy(lm.config)
    config.num_labels, config.architectures = 1, None
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.model.load_state_dict(lm.model.state_dict())
    return rm


class RMTrainer:
    """The Bradley-Terry step and its held-out eval. `__init__` only wires; `setup()` (called by
    `train()`) checks the inputs cheaply, then loads pairs and model, shards and resumes. The run
    around the steps is socialr1/run.py's `Run`, as for GRPO."""

    def __init__(self, cfg: RMConfig):
        self.cfg = cfg
        self.world = D.init_world(cfg.device)
        self.log = RunLog(Path(cfg.output_dir), cfg.steps, enabled=self.world.is_main, desc="reward model", shown="loss")
        self.run = Run(cfg, self.world, self.log, cfg.steps, shown="loss", product="reward model", eval_first=False)
        self.dtype = compute_dtype(cfg.model.dtype, self.world.device)
        self.policy = self.opt = self.sched = None
        self.ready = False

    def setup(self) -> None:
        """Cheap checks first, then pairs, model, sharding and resume. Idempotent."""
        if self.ready:
            return
        cfg = self.cfg
        if cfg.pairs_per_step % self.world.size:
            raise ConfigError(f"--pairs-per-step {cfg.pairs_per_step} must divide by the {self.world.size} ranks")
        if not cfg.model.tiny:
            check_model_dir(cfg.model.name_or_path, "--model.name-or-path")
        check_writable(Path(cfg.output_dir))
        self.run.prepare(shape_flags(cfg.model))
        quiet_loading()

        self.pairs, self.eval_pairs = self._load_data()
        lm, self.tokenizer = D.in_turn(self._load_model)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_ids = self._encode(self.pairs)
        self.eval_ids = self._encode(self.eval_pairs)
        if cfg.model.activation_checkpointing:
            checkpoint_activations(lm)
        self.policy = inputs.RewardHead(lm.to(self.world.device))
        D.shard(self.policy, lm.model.layers, self.dtype if self.dtype != torch.float32 else None, ())
        self.opt, self.sched = build_optimizer(self.policy.parameters(), cfg.optim, cfg.steps)
        self.run.restore(self.state())
        self.log.print(f"run: {len(self.pairs)} training pairs, {len(self.eval_pairs)} held-out pairs; {self.world.size} "
                       f"rank(s) on {self.world.device.type}, {str(self.dtype).removeprefix('torch.')} compute; "
                       f"{cfg.pairs_per_step} pairs per step, {cfg.steps} steps from step {self.run.start_step}")
        self.ready = True

    def state(self) -> State:
        return State(self.policy, self.tokenizer, self.dtype, self.opt, self.sched)

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_pairs)

    @property
    def final_eval(self) -> dict[str, float]:
        """The held-out metrics of the last eval (the final one once `train()` returned True)."""
        return self.run.last_eval

    # ---- setup -------------------------------------------------------------------------------
    def _load_data(self) -> tuple[list[Pair], list[Pair]]:
        d, cfg = self.cfg.data, self.cfg
        if d.synthetic:
            train, held_out = synthetic_splits(d.synthetic, d.eval_synthetic, cfg.seed, cfg.sip, d.synthetic_containers,
                                               d.synthetic_kinds)
        elif d.path:
            train = load_pairs(d.path, d.fields, d.split)
            held_out = generate_pairs(d.eval_synthetic, cfg.seed + EVAL_SEED_OFFSET, cfg.sip, {p.story for p in train},
                                      d.synthetic_containers)
        else:
            raise ConfigError("no training pairs: pass --data.path (file, folder or hub name) or --data.synthetic N")
        if d.eval_path:
            held_out = load_pairs(d.eval_path, d.fields, d.eval_split)
        if len(train) < cfg.pairs_per_step:
            raise ConfigError(f"{len(train)} training pairs, fewer than --pairs-per-step {cfg.pairs_per_step}")
        return train, held_out

    def _load_model(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        m = self.cfg.model
        w = self.cfg.warmstart
        if m.tiny:
            corpus = [s for p in self.pairs for t in (p.chosen, p.rejected) for s in self._texts(p, t)]
            lm, tokenizer = build_tiny(m, corpus, self.cfg.seed)
            if w.steps:
                template = rm_template(self.cfg.input.template, "--input.template")
                losses = learn_to_read(lm, tokenizer, self.pairs, template, w, self.cfg.seed, self.world.is_main)
                self.log.print(f"warm start: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")
            rm = classifier_from_causal(lm)
        else:
            rm, tokenizer = load_pretrained(m, self.world.device, self.cfg.seed, AutoModelForSequenceClassification, num_labels=1)
        # A new head starts at zero: every score is 0 and the loss log 2 at step 0, so no random
        # head biases the ranking. An earlier reward model keeps its trained head.
        if not any("SequenceClassification" in a for a in rm.config.architectures or ()):
            torch.nn.init.zeros_(rm.score.weight)
        rm.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
        setattr(rm.config, inputs.CONFIG_KEY, asdict(self.cfg.input))
        return rm, tokenizer

    def _texts(self, pair: Pair, think: str) -> list[str]:
        return inputs.reward_inputs(pair.story, pair.question, think, self.cfg.input.unit, self.cfg.sip, self.cfg.input.template)

    def _encode(self, pairs: list[Pair]) -> list[list[list[int]]]:
        """[2 * pair + (0 chosen, 1 rejected)][input][token]."""
        if not pairs:  # e.g. no held-out pairs (the tokenizer fails on an empty batch)
            return []
        stories = [p.story for p in pairs for _ in range(2)]
        questions = [p.question for p in pairs for _ in range(2)]
        thinks = [t for p in pairs for t in (p.chosen, p.rejected)]
        return inputs.encode(self.tokenizer, stories, questions, thinks, self.cfg.input, self.cfg.sip)

    # ---- one step ----------------------------------------------------------------------------
    def pair_indices(self, step: int) -> list[int]:
        """This rank's share of the step's pairs (socialr1.data.rank_share)."""
        w = self.world
        return rank_share(len(self.pairs), self.cfg.pairs_per_step, step, w.rank, w.size, self.cfg.seed)

    def micro_batches(self, index: list[int]) -> list[list[int]]:
        """This rank's pairs, shortest first, in micro-batches within the token budget; every rank
        runs as many micro-batches as the rank that needs most (FSDP collectives pair up)."""
        ids = self.train_ids
        rows = {i: len(ids[2 * i]) + len(ids[2 * i + 1]) for i in index}
        longest = {i: max(map(len, ids[2 * i] + ids[2 * i + 1])) for i in index}
        index = sorted(index, key=longest.get)
        groups = inputs.budget_groups([rows[i] for i in index], [longest[i] for i in index], self.cfg.token_budget)
        count = int(D.all_reduce_max(torch.tensor(len(groups))))
        while len(groups) < count:  # split the largest group; never stuck: count <= pairs per rank
            big = max(range(len(groups)), key=lambda g: len(groups[g]))
            groups[big : big + 1] = [groups[big][: len(groups[big]) // 2], groups[big][len(groups[big]) // 2 :]]
        return [[index[k] for k in g] for g in groups]

    def pair_scores(self, pairs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, 2] chosen and rejected scores of training pairs and [n] their losses, in one forward."""
        texts = [self.train_ids[2 * i + k] for i in pairs for k in (0, 1)]
        device = self.world.device
        ids, mask = inputs.pad_right([row for group in texts for row in group], self.pad_id)
        if self.cfg.loss.dense:  # one input per text (--input.unit think)
            every = self.policy(ids.to(device), mask.to(device), every_token=True)  # [2n, L]
            return dense_losses(every, [group[0] for group in texts], self.cfg.loss)
        owner = torch.tensor([t for t, group in enumerate(texts) for _ in group], device=device)
        flat = self.policy(ids.to(device), mask.to(device))  # [R]
        counts = torch.tensor([len(g) for g in texts], device=flat.device)
        scores = (torch.zeros(len(texts), device=flat.device).index_add(0, owner, flat) / counts).view(-1, 2)
        return scores, self.loss(scores)

    def loss(self, scores: torch.Tensor) -> torch.Tensor:
        """[n] per-pair loss from [n, 2] scores."""
        c = self.cfg.loss
        margin = scores[:, 0] - scores[:, 1]
        return -F.logsigmoid(margin - c.margin) + c.center * scores.square().mean(1)

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step over the step's pairs; until it, a stop asked on any rank drops the
        step before the next micro-batch."""
        t0 = time.perf_counter()
        index = self.pair_indices(step)
        self.policy.train()
        self.opt.zero_grad(set_to_none=True)
        done, local_loss = [], torch.zeros((), device=self.world.device)
        for group in self.micro_batches(index):
            self.run.gate()
            scores, losses = self.pair_scores(group)
            # Local mean over this rank's pairs; FSDP averages the ranks' gradients.
            loss = losses.sum() / len(index)
            loss.backward()
            local_loss += loss.detach()
            done.append(torch.cat([scores.detach(), losses.detach()[:, None]], 1))
        grad_norm = clip_grad_norm(self.policy, self.cfg.optim.grad_clip)
        skipped = guarded_step(self.opt, local_loss, grad_norm)  # its decision: the step's one host read
        self.sched.step()
        self.run.count_skip("non-finite loss or grad norm" if skipped else None)
        stats = D.all_gather_cat(torch.cat(done).float())  # [P, 3]: chosen, rejected, loss
        out = pair_metrics(stats[:, :2], stats[:, 2])
        out.update({"grad_norm": grad_norm.item(), "lr": self.sched.get_last_lr()[0], "time/step_s": time.perf_counter() - t0})
        return out

    # ---- eval --------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_scores(self) -> torch.Tensor:
        """[n_eval, 2] chosen and rejected scores of the held-out pairs, each rank scoring a slice
        through the shared scoring function (as GRPO scores), gathered in order."""
        n, size = len(self.eval_pairs), self.world.size
        per = math.ceil(n / size)
        lo, hi = min(n, self.world.rank * per), min(n, (self.world.rank + 1) * per)
        self.policy.eval()
        with D.gathered(self.policy):
            mine = inputs.score(self.policy, self.eval_ids[2 * lo : 2 * hi], self.pad_id, self.cfg.token_budget, self.world.device)
        padded = torch.full((2 * per,), math.nan)
        padded[: len(mine)] = mine
        return D.all_gather_cat(padded.to(self.world.device)).cpu()[: 2 * n].view(n, 2)

    def run_eval(self, step: int) -> dict[str, float]:
        scores = self.eval_scores()
        result = pair_metrics(scores, self.loss(scores))
        by_kind = defaultdict(list)
        for p, right in zip(self.eval_pairs, (scores[:, 0] > scores[:, 1]).tolist()):
            by_kind[p.kind].append(right)
        if len(by_kind) > 1 or "" not in by_kind:
            result.update({f"accuracy/{k}": sum(v) / len(v) for k, v in sorted(by_kind.items()) if k})
        self.log.scalars(step, {f"eval/{k}": v for k, v in result.items()})
        kinds = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in result.items() if k.startswith("accuracy/"))
        self.log.print(f"step {step}: held-out pairwise accuracy {result['accuracy']:.3f} on {len(scores)} pairs" + (f" ({kinds})" if kinds else ""))
        return result

    def train(self) -> bool:
        """Set up, then run the remaining steps (socialr1/run.py); the final held-out metrics are
        `final_eval`. False when a signal stopped the run early, after a resumable checkpoint."""
        self.setup()
        return self.run.train(self)

    def close(self) -> None:
        self.log.close()
        self.policy = self.opt = self.sched = None  # freed before the process group goes (see Trainer.close)
        gc.collect()
        D.close_world(self.world)


def compared_tokens(chosen: list[int], rejected: list[int]) -> int:
    """How many tokens, counted from the end, --loss.dense compares two inputs at: their common
    ending and the first token before it where they differ (at most the shorter input)."""
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[-1 - common] == rejected[-1 - common]:
        common += 1
    return min(common + 1, len(chosen), len(rejected))


def dense_losses(every: torch.Tensor, rows: list[list[int]], c: LossConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 2] last-token scores and [n] losses under --loss.dense: each pair's Bradley-Terry loss
    averaged over the tokens where `compared_tokens` aligns its two inputs. every: [2n, L]
    per-token scores of the right-padded `rows` (token ids; chosen, rejected alternating)."""
    n, device = len(rows) // 2, every.device
    lengths = torch.tensor([len(r) for r in rows], device=device)
    scores = every[torch.arange(2 * n, device=device), lengths - 1].view(n, 2)
    counts = [compared_tokens(rows[2 * p], rows[2 * p + 1]) for p in range(n)]
    depth = torch.tensor(counts, device=device)
    owner = torch.repeat_interleave(torch.arange(n, device=device), depth)  # [K]: the pair of each compared token
    back = torch.cat([torch.arange(d) for d in counts]).to(device)  # [K]: its place from the end
    chosen = every[2 * owner, lengths[2 * owner] - 1 - back]
    rejected = every[2 * owner + 1, lengths[2 * owner + 1] - 1 - back]
    per_token = -F.logsigmoid(chosen - rejected - c.margin)
    bt = torch.zeros(n, device=device).index_add(0, owner, per_token) / depth
    return scores, bt + c.center * scores.square().mean(1)


def pair_metrics(scores: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    """Loss, pairwise accuracy (chosen strictly above rejected), margin and score mean / std from
    [n, 2] scores and [n] losses."""
    margin = scores[:, 0] - scores[:, 1]
    out = {"loss": losses.mean().item(), "accuracy": (margin > 0).float().mean().item()}
    out.update(mean_std("margin", margin))
    out.update(mean_std("score", scores.flatten()))
    out.update({"score/chosen_mean": scores[:, 0].mean().item(), "score/rejected_mean": scores[:, 1].mean().item()})
    return out

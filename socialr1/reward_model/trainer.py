"""Pairwise (Bradley-Terry) reward-model training on the GRPO run's stack: FSDP2, AdamW with
warmup and decay, atomic Hugging Face checkpoints with resumable state, TensorBoard.

Per step: this rank's share of the step's pairs -> micro-batches by token budget, chosen and
rejected of a pair in the same forward -> loss -log sigmoid(r_c - r_r - margin) + center * r^2
-> gradients accumulated over micro-batches -> one optimizer step."""

import copy
import functools
import gc
import math
import random
import shutil
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import distributed as D
from socialr1.checkpoint import load_train_state, save_checkpoint
from socialr1.config import ConfigError
from socialr1.metrics import RunLog, mean_std
from socialr1.models import build_tiny, load_pretrained
from socialr1.reward_model import inputs
from socialr1.reward_model.config import RMConfig
from socialr1.reward_model.pairs import EVAL_SEED_OFFSET, Pair, generate_pairs, load_pairs, synthetic_splits
from socialr1.trainer import Trainer, lr_lambda


def classifier_from_causal(lm: PreTrainedModel) -> PreTrainedModel:
    """The sequence classifier (one label) of the same architecture, holding the causal LM's
    decoder weights; its LM head is dropped and its score head left for the caller to set."""
    config = copy.deepcopy(lm.config)
    config.num_labels, config.architectures = 1, None
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.model.load_state_dict(lm.model.state_dict())
    return rm


class RMTrainer:
    # The GRPO trainer's output-dir rule, `--resume auto` lookup and gradient clipping, shared: they
    # use only fields both have (cfg.output_dir / resume / overwrite / optim, out, log, policy).
    # `policy` here is the sharded reward model.
    _check_output_dir = Trainer._check_output_dir
    _resume_dir = Trainer._resume_dir
    _clip = Trainer._clip

    def __init__(self, cfg: RMConfig):
        self.cfg = cfg
        self.world = D.init_world(cfg.device)
        self.out = Path(cfg.output_dir)
        self.replace_earlier_run = self._check_output_dir()
        self.log = RunLog(self.out, cfg.steps, enabled=self.world.is_main, desc="reward model", shown="loss")
        on_cuda = self.world.device.type == "cuda"
        self.dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" or (cfg.model.dtype == "auto" and on_cuda) else torch.float32
        if cfg.pairs_per_step % self.world.size:
            raise ConfigError(f"--pairs-per-step {cfg.pairs_per_step} must divide by the {self.world.size} ranks")

        self.pairs, self.eval_pairs = self._load_data()
        lm, self.tokenizer = D.in_turn(self._load_model)
        self.pad_id = self.tokenizer.pad_token_id
        self.train_ids = self._encode(self.pairs)
        self.eval_ids = self._encode(self.eval_pairs)
        if cfg.model.activation_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = inputs.RewardHead(lm.to(self.world.device))
        D.shard(self.policy, lm.model.layers, self.dtype if self.dtype != torch.float32 else None, ())
        self.opt = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.optim, cfg.steps))
        resume = self._resume_dir()
        self.start_step = self._resume(resume) if resume else 0

    # ---- setup -------------------------------------------------------------------------------
    def _load_data(self) -> tuple[list[Pair], list[Pair]]:
        d, cfg = self.cfg.data, self.cfg
        if d.synthetic:
            train, held_out = synthetic_splits(d.synthetic, d.eval_synthetic, cfg.seed, cfg.sip)
        elif d.path:
            train = load_pairs(d.path, d.fields, d.split)
            held_out = generate_pairs(d.eval_synthetic, cfg.seed + EVAL_SEED_OFFSET, cfg.sip, {p.story for p in train})
        else:
            raise ConfigError("no training pairs: pass --data.path (file, folder or hub name) or --data.synthetic N")
        if d.eval_path:
            held_out = load_pairs(d.eval_path, d.fields, d.eval_split)
        if len(train) < cfg.pairs_per_step:
            raise ConfigError(f"{len(train)} training pairs, fewer than --pairs-per-step {cfg.pairs_per_step}")
        return train, held_out

    def _load_model(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        m = self.cfg.model
        if m.tiny:
            corpus = [s for p in self.pairs for t in (p.chosen, p.rejected) for s in self._texts(p, t)]
            lm, tokenizer = build_tiny(m, corpus, self.cfg.seed)
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
        return inputs.reward_inputs(pair.story, pair.question, think, self.cfg.input.unit, self.cfg.sip)

    def _encode(self, pairs: list[Pair]) -> list[list[list[int]]]:
        """[2 * pair + (0 chosen, 1 rejected)][input][token]."""
        stories = [p.story for p in pairs for _ in range(2)]
        questions = [p.question for p in pairs for _ in range(2)]
        thinks = [t for p in pairs for t in (p.chosen, p.rejected)]
        return inputs.encode(self.tokenizer, stories, questions, thinks, self.cfg.input, self.cfg.sip)

    # ---- one step ----------------------------------------------------------------------------
    def pair_indices(self, step: int) -> list[int]:
        """This rank's share of the step's pairs: a slice of a seeded permutation per epoch, so
        the global batch is the same whatever the number of ranks."""
        per_rank = self.cfg.pairs_per_step // self.world.size
        first = step * self.cfg.pairs_per_step + self.world.rank * per_rank
        n = len(self.pairs)
        return [self._epoch_order(k // n)[k % n] for k in range(first, first + per_rank)]

    @functools.lru_cache(maxsize=2)
    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.pairs)))
        random.Random(self.cfg.seed + epoch).shuffle(order)
        return order

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

    def pair_scores(self, pairs: list[int]) -> torch.Tensor:
        """[n, 2] chosen and rejected scores of training pairs, in one forward."""
        texts = [self.train_ids[2 * i + k] for i in pairs for k in (0, 1)]
        owner = torch.tensor([t for t, group in enumerate(texts) for _ in group], device=self.world.device)
        ids, mask = inputs.pad_right([row for group in texts for row in group], self.pad_id)
        flat = self.policy(ids.to(self.world.device), mask.to(self.world.device))  # [R]
        counts = torch.tensor([len(g) for g in texts], device=flat.device)
        return (torch.zeros(len(texts), device=flat.device).index_add(0, owner, flat) / counts).view(-1, 2)

    def loss(self, scores: torch.Tensor) -> torch.Tensor:
        """[n] per-pair loss from [n, 2] scores."""
        c = self.cfg.loss
        margin = scores[:, 0] - scores[:, 1]
        return -F.logsigmoid(margin - c.margin) + c.center * scores.square().mean(1)

    def step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        index = self.pair_indices(step)
        self.policy.train()
        self.opt.zero_grad(set_to_none=True)
        done = []
        for group in self.micro_batches(index):
            scores = self.pair_scores(group)
            losses = self.loss(scores)
            # Local mean over this rank's pairs; FSDP averages the ranks' gradients.
            (losses.sum() / len(index)).backward()
            done.append(torch.cat([scores.detach(), losses.detach()[:, None]], 1))
        grad_norm = self._clip().item()  # one host read per step
        self.opt.step()
        self.sched.step()
        stats = D.all_gather_cat(torch.cat(done).float())  # [P, 3]: chosen, rejected, loss
        out = pair_metrics(stats[:, :2], stats[:, 2])
        out.update({"grad_norm": grad_norm, "lr": self.sched.get_last_lr()[0], "time/step_s": time.perf_counter() - t0})
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

    # ---- the run -----------------------------------------------------------------------------
    def _resume(self, directory: Path) -> int:
        step = load_train_state(directory, self.policy, self.opt, self.sched)["step"]
        self.log.print(f"resumed from {directory} after step {step}")
        return step

    def save(self, name: str, step: int, resumable: bool) -> None:
        opt, sched = (self.opt, self.sched) if resumable else (None, None)
        save_checkpoint(self.policy, self.tokenizer, self.out / name, self.dtype, opt, sched, {"step": step})

    def train(self) -> bool:
        """Runs the steps (True: all of them); the final held-out metrics go to `final_eval`."""
        cfg = self.cfg
        if self.replace_earlier_run and self.world.is_main:
            shutil.rmtree(self.out)
        dist.barrier()
        self.log.start(self.start_step)
        self.log.print(f"{len(self.pairs)} training pairs, {len(self.eval_pairs)} held-out pairs")
        for step in range(self.start_step, cfg.steps):
            metrics = self.step(step)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                self.log.scalars(step, metrics)
            self.log.advance(metrics["loss"], metrics["time/step_s"])
            done = step + 1
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                self.save(f"checkpoint-{done}", done, resumable=True)
            if self.eval_pairs and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                self.run_eval(done)
        self.final_eval = self.run_eval(cfg.steps) if self.eval_pairs else {}
        self.save("final", cfg.steps, resumable=False)
        self.log.print(f"done: reward model in {self.out / 'final'}, TensorBoard: tensorboard --logdir {self.out / 'tb'}")
        return True

    def close(self) -> None:
        self.log.close()
        self.policy = self.opt = self.sched = None  # freed before the process group goes (see Trainer.close)
        gc.collect()
        D.close_world(self.world)


def pair_metrics(scores: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    """Loss, pairwise accuracy (chosen strictly above rejected), margin and score mean / std from
    [n, 2] scores and [n] losses."""
    margin = scores[:, 0] - scores[:, 1]
    out = {"loss": losses.mean().item(), "accuracy": (margin > 0).float().mean().item()}
    out.update(mean_std("margin", margin))
    out.update(mean_std("score", scores.flatten()))
    out.update({"score/chosen_mean": scores[:, 0].mean().item(), "score/rejected_mean": scores[:, 1].mean().item()})
    return out

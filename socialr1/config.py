"""Every setting of a run, as typed dataclasses that tyro turns into `python train.py --help`.

Presets: `socialr1-4b` (the paper's recipe, the default), `socialr1-8b`, and `demo` (tiny model,
generated data, CPU, a few minutes)."""

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import tyro

from socialr1.data import FieldMap
from socialr1.errors import ConfigError  # defined below the settings modules; imported from here too
from socialr1.grpo import LossType, ScaleRewards
from socialr1.rewards import RewardConfig
from socialr1.sip import SIPFormat
from socialr1.synthetic import CONTAINERS


def _require(ok: bool, flag: str, value: object, need: str) -> None:
    if not ok:
        raise ConfigError(f"{flag} {value}: must be {need}")


@dataclass
class ModelConfig:
    name_or_path: str = "Qwen/Qwen3-4B"
    """Hugging Face hub name or local directory of the causal LM to train (unused with --model.tiny)."""
    tiny: bool = False
    """Build a tiny random Qwen3 and a tokenizer trained on the generated data, instead of loading
    one (offline demo and tests)."""
    tiny_hidden_size: int = 128
    """Hidden size of the tiny model."""
    tiny_layers: int = 2
    """Decoder layers of the tiny model."""
    tiny_heads: int = 4
    """Attention heads of the tiny model (key/value heads: half of them)."""
    tiny_vocab_size: int = 2048
    """Upper bound on the tiny tokenizer's vocabulary (BPE stops early on a small corpus)."""
    tiny_embed_std: float | None = None
    """Standard deviation of the tiny model's (tied) embeddings at initialisation; none: the
    model's own, 0.02 like every layer. At 0.1 the names' vectors stay apart while a warm start
    learns where a name goes, so copying them from the story starts sooner (README: rm-demo-content)."""
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """Compute dtype: auto is bfloat16 on CUDA (FSDP mixed precision over float32 master weights)
    and float32 on CPU."""
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    """Attention kernel for training and log-probs: auto is flash_attention_2 when flash-attn
    imports on CUDA, else sdpa."""
    random_init: bool = False
    """Build the model from name-or-path's config.json with random weights, loading only the config
    and tokenizer (benchmarks at real shapes without the weights, e.g. benchmarks/gpu_check.py)."""
    activation_checkpointing: bool = True
    """Recompute decoder-layer activations in the backward pass (less memory, ~30% more compute)."""

    def __post_init__(self) -> None:
        for name in ("tiny_hidden_size", "tiny_layers", "tiny_heads", "tiny_vocab_size"):
            _require(getattr(self, name) >= 1, f"--model.{name.replace('_', '-')}", getattr(self, name), "at least 1")
        _require(self.tiny_hidden_size % self.tiny_heads == 0, "--model.tiny-hidden-size", self.tiny_hidden_size,
                 f"a multiple of --model.tiny-heads {self.tiny_heads}")
        _require(self.tiny_embed_std is None or self.tiny_embed_std > 0, "--model.tiny-embed-std", self.tiny_embed_std,
                 "above 0")


def shape_flags(model: ModelConfig) -> tuple[str, ...]:
    """Flags whose change gives other parameter shapes, so that a checkpoint of one run cannot
    resume another: the model, and for the tiny model its sizes and the data its tokenizer is
    trained on (the same field names in both trainers' settings)."""
    tiny = ("model.tiny_hidden_size", "model.tiny_layers", "model.tiny_heads", "model.tiny_vocab_size",
            "data.synthetic", "data.path", "seed")
    return ("model.name_or_path", "model.tiny") + (tiny if model.tiny else ())


@dataclass
class DataConfig:
    path: str = "Jincenzi/ToMBench_Hard"
    """Training items: hub dataset name, or a local JSONL/JSON/CSV/Parquet file or folder of them."""
    split: str = "train"
    """Split to load when `path` is a hub dataset."""
    fields: FieldMap = field(default_factory=FieldMap)
    """Which fields hold story, question, options, answer and ability."""
    synthetic: int = 0
    """If > 0, train on this many generated false-belief items instead of reading `path`."""
    synthetic_containers: int = len(CONTAINERS)
    """Generated items (training and eval): how many container names the stories draw their four
    places from (4 to all of them)."""
    synthetic_fixed_options: bool = False
    """Generated items: list the options in one fixed order instead of shuffled (with 4 containers,
    every item offers the same four options in the same order)."""
    eval_path: str | None = None
    """Items to evaluate on every `eval_every` steps: same formats as `path`, or a benchmark name
    (`tombench`, `hitom:200` for a fixed seeded subset of 200; see eval.py); none: no eval, unless
    `eval_synthetic` is set."""
    eval_synthetic: int = 0
    """If > 0 and no `eval_path`, evaluate on this many generated items unseen in training."""
    eval_limit: int | None = None
    """Evaluate on at most this many items."""
    max_prompt_tokens: int = 1024
    """Items whose prompt is longer are skipped (with a count in the log)."""

    def __post_init__(self) -> None:
        _require(self.synthetic >= 0, "--data.synthetic", self.synthetic, "at least 0")
        _require(4 <= self.synthetic_containers <= len(CONTAINERS), "--data.synthetic-containers", self.synthetic_containers,
                 f"4 to {len(CONTAINERS)}")
        _require(self.eval_synthetic >= 0, "--data.eval-synthetic", self.eval_synthetic, "at least 0")
        _require(self.eval_limit is None or self.eval_limit >= 1, "--data.eval-limit", self.eval_limit, "at least 1")
        _require(self.max_prompt_tokens >= 1, "--data.max-prompt-tokens", self.max_prompt_tokens, "at least 1")


@dataclass
class RolloutConfig:
    prompts_per_step: int = 64
    """Prompts per training step over all ranks (must divide by the number of ranks)."""
    group_size: int = 5
    """Completions sampled per prompt (G); advantages are relative within a group."""
    max_new_tokens: int = 1024
    """Completion length limit; longer completions are cut and count as truncated."""
    temperature: float = 1.0
    """Sampling temperature; the log-probs of the loss use the same temperature, as TRL does."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: off). Nothing else restricts sampling: no
    library or model generation default (HF's top_k=50, Qwen3's shipped T 0.6 / top_p 0.95) applies."""
    stop_strings: tuple[str, ...] = ()
    """Completions also end at (and keep) the token that completes one of these strings, e.g.
    </Answer>; they always end at EOS and <|im_end|>."""
    check_every: int = 8
    """Decode steps between host reads of which rows have finished (and stop-string searches).
    When at most half of the decode batch is still running at a check, finished rows leave it."""
    compile: bool = False
    """torch.compile the single-token decode step, one graph per batch size x KV-cache bucket
    (multiples of 128 tokens), at most 8, each logged. Compiled steps read the whole bucket and keep
    finished rows in the batch. HF generate's own automatic compilation is never used."""

    def __post_init__(self) -> None:
        _require(self.prompts_per_step >= 1, "--rollout.prompts-per-step", self.prompts_per_step, "at least 1")
        _require(self.group_size >= 2, "--rollout.group-size", self.group_size,
                 "at least 2 (advantages compare the samples of a group)")
        _require(self.max_new_tokens >= 1, "--rollout.max-new-tokens", self.max_new_tokens, "at least 1")
        _require(self.temperature > 0, "--rollout.temperature", self.temperature,
                 "above 0 (training samples; the loss divides the logits by it)")
        _require(0 < self.top_p <= 1, "--rollout.top-p", self.top_p, "in (0, 1]")
        _require(self.top_k >= 0, "--rollout.top-k", self.top_k, "at least 0 (0: off)")


@dataclass
class GRPOConfig:
    beta: float = 0.04
    """KL coefficient (k3 estimator against the frozen reference model); 0 skips the reference."""
    eps_low: float = 0.2
    """Clip range below: ratios under 1 - eps_low stop pushing down negative-advantage tokens."""
    eps_high: float = 0.2
    """Clip range above (DAPO's clip-higher uses 0.28)."""
    loss_type: LossType = "grpo"
    """Loss normalisation, as TRL: grpo (per-sequence mean, then mean), bnpo (tokens of the local
    micro-batch), dr_grpo (batch size x max_new_tokens), dapo (all active tokens of the step)."""
    scale_rewards: ScaleRewards = "group"
    """Advantage scaling: divide by the group's reward std, the batch's, or not at all."""
    num_iterations: int = 1
    """Optimizer steps per rollout batch (TRL's mu); above 1 the old policy's log-probs are kept."""
    micro_batch_size: int = 5
    """Completions per forward/backward on one rank; gradients accumulate over micro-batches. A
    multiple of --rollout.group-size keeps --grpo.share-prompt's faster forward on (default: one group of 5)."""
    share_prompt: bool = True
    """Compute each prompt once per group in the loss and the old / reference log-prob passes: the G
    completions attend to the prompt's keys/values (same values and gradients as without). Works with
    activation checkpointing, both kernel backends and FSDP2; attention runs through SDPA there
    whatever --model.attn-implementation says. Falls back to one full sequence per row when
    --grpo.micro-batch-size is not a multiple of --rollout.group-size, or for a model without the
    Qwen3/Llama layer layout or with sliding-window layers."""
    grad_sync: Literal["every", "last"] = "every"
    """Under FSDP2 on several ranks: reduce-scatter gradients after every micro-batch ("every":
    sharded gradient memory only), or only after the last one of an optimizer step ("last": fewer
    collectives, but each rank holds the unsharded gradients of the whole model in between)."""

    def __post_init__(self) -> None:
        _require(self.beta >= 0, "--grpo.beta", self.beta, "at least 0")
        _require(0 <= self.eps_low < 1, "--grpo.eps-low", self.eps_low, "in [0, 1)")
        _require(0 <= self.eps_high < 1, "--grpo.eps-high", self.eps_high, "in [0, 1)")
        _require(self.num_iterations >= 1, "--grpo.num-iterations", self.num_iterations, "at least 1")
        _require(self.micro_batch_size >= 1, "--grpo.micro-batch-size", self.micro_batch_size, "at least 1")


@dataclass
class OptimConfig:
    lr: float = 5e-7
    """Peak learning rate of AdamW."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warmup: none, linear to 0, or cosine to 0 at the last optimizer step."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to `lr`."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: no clipping)."""

    def __post_init__(self) -> None:
        _require(self.lr > 0, "--optim.lr", self.lr, "above 0")
        _require(self.warmup_steps >= 0, "--optim.warmup-steps", self.warmup_steps, "at least 0")
        _require(self.weight_decay >= 0, "--optim.weight-decay", self.weight_decay, "at least 0")
        _require(all(0 <= b < 1 for b in self.betas), "--optim.betas", self.betas, "in [0, 1) each")
        _require(self.grad_clip >= 0, "--optim.grad-clip", self.grad_clip, "at least 0 (0: off)")


@dataclass
class WarmStartConfig:
    steps: int = 0
    """Supervised steps on the generated items' gold SIP traces before GRPO (0: none). A random
    tiny model never finds the SIP format by sampling; a short warm start gives GRPO a signal."""
    lr: float = 3e-3
    """Learning rate of the warm start."""
    batch_size: int = 16
    """Items per warm-start step."""
    answers: Literal["gold", "random"] = "gold"
    """gold: each trace ends in the right option. random: in a random one (Response Generation and
    answer tag), so the warm start teaches the format and the reasoning but no answer, and what GRPO
    adds to accuracy is measurable."""

    def __post_init__(self) -> None:
        _require(self.steps >= 0, "--warmstart.steps", self.steps, "at least 0")
        _require(self.lr > 0, "--warmstart.lr", self.lr, "above 0")
        _require(self.batch_size >= 1, "--warmstart.batch-size", self.batch_size, "at least 1")


@dataclass
class RunSettings:
    """How a run lives, the same for GRPO and the reward model (socialr1/run.py): where it writes,
    how often, how it resumes and when it gives up."""

    seed: int = 0
    """Seed of everything random: data order, sampling, generated data, the tiny model's initialisation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (one GPU per rank), else CPU."""
    output_dir: str = "runs/run"
    """Where TensorBoard events, metrics.jsonl and checkpoints go."""
    log_every: int = 1
    """Write scalars every N steps."""
    save_every: int = 100
    """Write a resumable checkpoint-N every N steps (0: only at the end, and when stopped by a signal)."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the start and the end, when there is eval data)."""
    overwrite: bool = False
    """Start afresh in an output dir that already holds a run, deleting its metrics, TensorBoard
    events and checkpoints (without it, such a run stops before touching anything)."""
    resume: str | None = None
    """A checkpoint-N directory of an earlier run with the same settings: model, optimizer,
    scheduler, data order and sampling continue from step N. auto: the newest complete checkpoint-N
    in --output-dir, or a fresh start when there is none."""
    keep_last: int = 0
    """Keep only the newest K checkpoint-N directories (0: keep all; final/ is never deleted)."""
    max_skipped_steps: int = 10
    """Stop the run after this many consecutive skipped steps (non-finite loss or grad norm, or, in
    GRPO, too many failed reward-service calls)."""

    def __post_init__(self) -> None:
        _require(self.log_every >= 1, "--log-every", self.log_every, "at least 1")
        for name in ("save_every", "eval_every", "keep_last"):
            _require(getattr(self, name) >= 0, f"--{name.replace('_', '-')}", getattr(self, name), "at least 0")
        _require(self.max_skipped_steps >= 1, "--max-skipped-steps", self.max_skipped_steps, "at least 1")


@dataclass
class TrainConfig(RunSettings):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sip: SIPFormat = field(default_factory=SIPFormat)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    steps: int = 600
    """GRPO steps (each: one rollout batch, `num_iterations` optimizer steps)."""
    sample_every: int = 10
    """Write a few sample completions as TensorBoard text every N steps (0: never)."""
    max_reward_failure_rate: float = 0.1
    """Skip the step when more than this fraction of the step's completions could not be scored by
    an external reward service (a judge or reward-model endpoint)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.steps >= 1, "--steps", self.steps, "at least 1")
        _require(self.sample_every >= 0, "--sample-every", self.sample_every, "at least 0")
        _require(0 <= self.max_reward_failure_rate <= 1, "--max-reward-failure-rate", self.max_reward_failure_rate,
                 "in [0, 1]")


def _demo() -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(tiny=True, dtype="float32", activation_checkpointing=False),
        # Four places listed in one order: the letter of a place is fixed, so what an answer needs is
        # the right place, read from the story.
        data=DataConfig(synthetic=2000, eval_synthetic=128, max_prompt_tokens=512, synthetic_containers=4,
                        synthetic_fixed_options=True),
        rollout=RolloutConfig(prompts_per_step=8, group_size=8, max_new_tokens=128),
        grpo=GRPOConfig(loss_type="dapo", micro_batch_size=24),
        optim=OptimConfig(lr=3e-4),
        # A dense additive reward at a constant curriculum weight: a rising total then means the
        # policy improved, not that the curriculum switched a term on.
        reward=RewardConfig(mode="additive", curriculum_start=0.0, curriculum_end=0.0, len_min=24, len_max=200),
        # Traces that reason to the right place but choose a random option: the warm start teaches
        # the format and the reasoning, and any rise in accuracy is GRPO's. 1,500 small steps: the
        # tiny model starts copying places from the story into its trace only after about 700.
        warmstart=WarmStartConfig(steps=1500, batch_size=8, answers="random"),
        sip=SIPFormat(instruction="brief"),
        steps=60,
        device="cpu",
        output_dir="runs/demo",
        sample_every=5,
        save_every=0,
        eval_every=10,
    )


def _paper(model: str, output_dir: str) -> TrainConfig:
    """The paper's recipe (the field defaults: G=5, beta 0.04, lr 5e-7, 600 steps, 1,024 new tokens,
    micro-batches of one group) on `model`, keeping the two newest checkpoints (about 48 GB each at
    Qwen3-4B with the optimizer state)."""
    return TrainConfig(model=ModelConfig(name_or_path=model), reward=RewardConfig(preset="social-r1"),
                       output_dir=output_dir, keep_last=2)


# The paper's reward needs an LLM judge and a trained reward model; without --reward.judge.base-url
# and --reward.rm.path (or --reward.rm.url) the run says so at start-up and uses the lexical scorers.
PAPER_REWARD = "Social-R1's reward: judge and reward model where --reward.judge.* / --reward.rm.* are given, else lexical"
PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "socialr1-4b": (
        f"Paper recipe: Qwen3-4B, G=5, beta 0.04, lr 5e-7, 600 steps; {PAPER_REWARD} (default).",
        _paper("Qwen/Qwen3-4B", "runs/socialr1-4b"),
    ),
    "socialr1-8b": (f"Paper recipe on Qwen3-8B; {PAPER_REWARD}.", _paper("Qwen/Qwen3-8B", "runs/socialr1-8b")),
    "demo": ("Offline CPU demo: tiny Qwen3, generated false-belief items, a few minutes.", _demo()),
}


def parse(args: Sequence[str] | None = None, description: str | None = None) -> TrainConfig:
    """Command line -> TrainConfig: a preset (socialr1-4b when none is named), then its flags."""
    return parse_preset(PRESETS, "socialr1-4b", args, description)


def parse_preset(presets: dict[str, tuple[str, Any]], default: str, args: Sequence[str] | None, description: str | None) -> Any:
    """A preset named first on the command line (`default` when none is), then its flags."""
    choices = tyro.extras.subcommand_type_from_defaults(
        {name: cfg for name, (_, cfg) in presets.items()}, {name: doc for name, (doc, _) in presets.items()}
    )
    return tyro.cli(choices, default=presets[default][1], args=args, description=description)


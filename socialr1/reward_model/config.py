"""Settings of a reward-model run, as typed dataclasses that tyro turns into
`python train.py reward-model --help`. Model and optimizer settings are the GRPO run's own dataclasses.

Presets: `rm-qwen3-4b` (Qwen3-4B with a scalar head, the default) and `rm-demo` (tiny model,
generated pairs, CPU, a few minutes)."""

from dataclasses import dataclass, field
from typing import Literal, Sequence

from socialr1.config import ModelConfig, OptimConfig, parse_preset
from socialr1.reward_model.inputs import InputConfig
from socialr1.reward_model.pairs import PairFields
from socialr1.sip import SIPFormat


@dataclass
class PairDataConfig:
    path: str | None = None
    """Training pairs: hub dataset name, or a local JSONL/JSON/CSV/Parquet file or folder of them."""
    split: str = "train"
    """Split to load when `path` is a hub dataset."""
    fields: PairFields = field(default_factory=PairFields)
    """Which fields hold story, question, options, chosen, rejected and kind."""
    synthetic: int = 0
    """If > 0, train on this many pairs generated from the synthetic items' gold SIP traces
    instead of reading `path`."""
    eval_path: str | None = None
    """Held-out pairs (same formats as `path`); none: `eval_synthetic` generated pairs, or no eval."""
    eval_split: str = "test"
    """Split to load when `eval_path` is a hub dataset."""
    eval_synthetic: int = 0
    """If > 0 and no `eval_path`, evaluate on this many generated pairs from items of another seed,
    none of whose stories a training pair has."""


@dataclass
class LossConfig:
    margin: float = 0.0
    """Bradley-Terry margin: the loss is -log sigmoid(r_chosen - r_rejected - margin)."""
    center: float = 0.0
    """Coefficient of the penalty mean(r^2) over chosen and rejected scores, which keeps scores
    centred on 0 (e.g. 0.01; 0: off)."""


@dataclass
class RMConfig:
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name_or_path="Qwen/Qwen3-4B"))
    """The causal LM (or an earlier reward-model checkpoint) to start from. A causal LM becomes a
    Qwen3ForSequenceClassification with its decoder weights and a zero-initialised score head."""
    data: PairDataConfig = field(default_factory=PairDataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    """What the reward model reads (saved in the checkpoint, so GRPO scores the same way)."""
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-6, schedule="cosine", warmup_steps=10, weight_decay=0.01)
    )
    sip: SIPFormat = field(default_factory=SIPFormat)
    pairs_per_step: int = 64
    """Preference pairs per optimizer step over all ranks (must divide by the number of ranks)."""
    token_budget: int = 16384
    """Tokens per forward on one rank (rows x padded length); a rank's pairs are split into as
    many micro-batches as needed, their gradients accumulated."""
    steps: int = 300
    """Optimizer steps; data order is a seeded permutation per epoch over the training pairs."""
    seed: int = 0
    """Seed of data order, generated pairs and the tiny model's initialisation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available (one GPU per rank), else CPU."""
    output_dir: str = "runs/rm-qwen3-4b"
    """Where TensorBoard events, metrics.jsonl and checkpoints go."""
    log_every: int = 1
    """Write scalars every N steps."""
    save_every: int = 100
    """Write a checkpoint every N steps (0: only at the end)."""
    eval_every: int = 50
    """Evaluate on the held-out pairs every N steps (0: only at the end)."""
    overwrite: bool = False
    """Start afresh in an output dir that already holds a run, deleting it."""
    resume: str | None = None
    """A checkpoint-N directory of an earlier run with the same settings: continue from step N;
    auto: the newest complete checkpoint in --output-dir (none: start afresh)."""


def _demo() -> RMConfig:
    return RMConfig(
        model=ModelConfig(tiny=True, tiny_hidden_size=128, tiny_layers=2, tiny_vocab_size=1024, dtype="float32",
                          activation_checkpointing=False),
        data=PairDataConfig(synthetic=4000, eval_synthetic=800),
        input=InputConfig(max_length=512),
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=10, weight_decay=0.01),
        pairs_per_step=32,
        token_budget=16384,
        steps=120,
        device="cpu",
        output_dir="runs/rm-demo",
        save_every=0,
        eval_every=40,
    )


PRESETS: dict[str, tuple[str, RMConfig]] = {
    "rm-qwen3-4b": ("Qwen3-4B reward model with a scalar head on SIP preference pairs (default).", RMConfig()),
    "rm-demo": ("Offline CPU demo: tiny Qwen3 reward model on generated SIP pairs, a few minutes.", _demo()),
}


def parse(args: Sequence[str] | None = None, description: str | None = None) -> RMConfig:
    """Command line -> RMConfig: a preset (rm-qwen3-4b when none is named), then its flags."""
    return parse_preset(PRESETS, "rm-qwen3-4b", args, description)

"""The plan's own settings (`--plan.*`) and the GPUs it plans for."""

from dataclasses import dataclass
from typing import Literal

GiB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory: int  # bytes the driver reports (nvidia-smi's total)
    bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s (no sparsity)
    hbm: float  # HBM bandwidth, bytes/s
    nvlink: float  # NVLink bandwidth per GPU and direction, bytes/s (half the datasheet's bidirectional total)
    source: str


# Datasheet peaks of the SXM parts; memory as nvidia-smi reports it (MiB).
GPUS = {
    "a100-40gb": GPU("A100-SXM4-40GB", 40_960 * 2**20, 312e12, 1_555e9, 300e9,
                     "NVIDIA A100 Tensor Core GPU datasheet (2021): 312 TFLOPS bf16, 1,555 GB/s HBM2, NVLink 600 GB/s"),
    "a100-80gb": GPU("A100-SXM4-80GB", 81_920 * 2**20, 312e12, 2_039e9, 300e9,
                     "NVIDIA A100 Tensor Core GPU datasheet (2021): 312 TFLOPS bf16, 2,039 GB/s HBM2e, NVLink 600 GB/s"),
    "h100-80gb": GPU("H100-SXM5-80GB", 81_559 * 2**20, 989e12, 3_350e9, 450e9,
                     "NVIDIA H100 Tensor Core GPU datasheet: 989 TFLOPS bf16 dense (1,979 sparse), 3.35 TB/s HBM3, NVLink 900 GB/s"),
    "h200": GPU("H200-SXM-141GB", 143_771 * 2**20, 989e12, 4_800e9, 450e9,
                "NVIDIA H200 Tensor Core GPU datasheet: 989 TFLOPS bf16 dense, 4.8 TB/s HBM3e, 141 GB, NVLink 900 GB/s"),
}
GPUName = Literal["a100-40gb", "a100-80gb", "h100-80gb", "h200"]


@dataclass
class PlanConfig:
    gpu: GPUName = "a100-80gb"
    """GPU to plan for: its memory, bf16 FLOP/s, HBM and NVLink bandwidth (datasheet peaks)."""
    world_size: int = 8
    """Ranks (one GPU each) of the planned run."""
    prompt_tokens: int | None = None
    """Tokens of every prompt (default: --data.max-prompt-tokens, the worst case)."""
    completion_tokens: int | None = None
    """Tokens of every completion: each row samples a stop token as its last (default: none stops,
    every completion runs to --rollout.max-new-tokens, the worst case)."""
    headroom: float = 0.1
    """Fraction of the GPU's memory kept free for what the tracker does not see: CUDA context, NCCL
    buffers, the caching allocator's fragmentation."""
    fit: bool = True
    """When the plan does not fit: plan again with smaller settings until one does, and say which."""
    model_config: str | None = None
    """A model's config.json (default: the model folder's, or the one shipped for Qwen3-4B / Qwen3-8B)."""

    def __post_init__(self) -> None:
        from socialr1.config import _require

        _require(self.world_size >= 1, "--plan.world-size", self.world_size, "at least 1")
        _require(self.prompt_tokens is None or self.prompt_tokens >= 1, "--plan.prompt-tokens", self.prompt_tokens, "at least 1")
        _require(self.completion_tokens is None or self.completion_tokens >= 1, "--plan.completion-tokens",
                 self.completion_tokens, "at least 1")
        _require(0 <= self.headroom < 1, "--plan.headroom", self.headroom, "in [0, 1)")

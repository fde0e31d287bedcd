"""Rollout: G completions per prompt from the current policy, in-process on every rank, with our own
engine on the Hugging Face model (engine.py), decode settings in one object (sampling.py), and the
batch every later stage reads (batch.py)."""

from socialr1.rollout.batch import Rollout, pad_left, stop_mask
from socialr1.rollout.engine import Engine, greedy, sample
from socialr1.rollout.sampling import SamplingParams

__all__ = ["Engine", "Rollout", "SamplingParams", "greedy", "pad_left", "sample", "stop_mask"]

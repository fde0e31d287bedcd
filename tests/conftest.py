"""Shared fixtures: a tiny Qwen3 with a tokenizer trained on generated items (no hub needed)."""

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from socialr1 import tiny  # noqa: E402
from socialr1.prompts import user_message  # noqa: E402
from socialr1.sip import SIPFormat  # noqa: E402
from socialr1.synthetic import generate_items  # noqa: E402


@pytest.fixture(scope="session")
def items():
    return generate_items(64, seed=0)


@pytest.fixture(scope="session")
def tokenizer(items):
    fmt = SIPFormat()
    corpus = [user_message(it, fmt) for it in items] + [fmt.render(it.gold_stages, it.answer_letter) for it in items]
    return tiny.build_tokenizer(corpus, 1024)


@pytest.fixture()
def lm(tokenizer):
    torch.manual_seed(0)
    return tiny.build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)


@pytest.fixture(scope="session")
def world():
    """A one-rank gloo group, as `python train.py` uses, for code that calls collectives."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield

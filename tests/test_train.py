"""The trainer as a user meets it: the CLI, errors, checkpoints, resuming."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from socialr1.checkpoint import save_checkpoint
from socialr1.config import ModelConfig, OptimConfig, TrainConfig, parse
from socialr1.models import ModelLoadError, load_pretrained
from socialr1.optim import lr_lambda
from socialr1.policy import Policy
from tests.test_distributed import TINY

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> TrainConfig:
    return parse(list(args))


def test_presets_follow_the_paper_and_flags_override():
    cfg = cli()
    assert (cfg.model.name_or_path, cfg.rollout.group_size, cfg.grpo.beta, cfg.optim.lr, cfg.steps) == (
        "Qwen/Qwen3-4B", 5, 0.04, 5e-7, 600)
    assert cli("socialr1-4b") == cfg
    assert cli("socialr1-8b").model.name_or_path == "Qwen/Qwen3-8B"
    demo = cli("demo", "--grpo.loss-type", "dr_grpo", "--rollout.group-size", "4")
    assert demo.model.tiny and demo.grpo.loss_type == "dr_grpo" and demo.rollout.group_size == 4


@pytest.mark.parametrize("preset", ["socialr1-4b", "socialr1-8b"])
def test_paper_presets_share_the_prompt_and_keep_two_checkpoints(preset):
    cfg = cli(preset)
    assert cfg.grpo.share_prompt and cfg.grpo.micro_batch_size % cfg.rollout.group_size == 0
    assert cfg.keep_last == 2 and cfg.output_dir == f"runs/{preset}"


def test_start_up_is_one_summary_that_says_why_the_prompt_is_not_shared(tmp_path):
    """No progress bar per data or weight file and no library warning; one summary (items, ranks,
    device, dtype, per-rank batch, scorers), with the reason the fast forward is off."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "--steps", "1", "--rollout.prompts-per-step", "2",
         "--rollout.max-new-tokens", "4", "--grpo.micro-batch-size", "7", "--model.activation-checkpointing",
         "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("run: ")] == [
        "run: 32 training items, 0 eval items; 1 rank(s) on cpu, float32 compute, 0.1351M parameters"]
    assert ("prompt once per group: OFF: --grpo.micro-batch-size 7 is not a multiple of --rollout.group-size 8, "
            "so every row recomputes its prompt (pass --grpo.micro-batch-size 8)") in done.stdout
    assert "reward: formula sip, structure lexical, content lexical" in done.stdout
    assert "Warning" not in done.stderr and "Generating" not in done.stderr


def test_help_explains_every_setting(capsys):
    with pytest.raises(SystemExit):
        cli("socialr1-4b", "--help")
    text = capsys.readouterr().out
    for phrase in ("KL coefficient", "--grpo.loss-type", "scale-rewards", "micro-batch", "warmup", "activation",
                   "curriculum", "--data.fields.answer"):
        assert phrase.lower() in text.lower(), phrase


def test_offline_hub_name_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--model.name-or-path ./Qwen3-4B"):
        load_pretrained(ModelConfig(), torch.device("cpu"))


def test_bad_settings_exit_with_one_line_naming_the_flag(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "demo", "--data.synthetic", "0", "--data.path", str(tmp_path / "missing.jsonl"),
         "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing.jsonl'}: no such file or folder"


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedule_warms_up_then_decays(schedule):
    f = lr_lambda(OptimConfig(schedule=schedule, warmup_steps=4), 20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    last = {"constant": 1.0, "linear": 1 / 16, "cosine": 0.5 * (1 + math.cos(15 / 16 * math.pi))}[schedule]
    assert f(19) == pytest.approx(last)


def test_checkpoint_is_atomic_and_loads_to_the_same_model(tmp_path, tokenizer, lm, world):
    from socialr1 import distributed as D

    reference = copy.deepcopy(lm)
    policy = Policy(lm)
    D.shard(policy, lm.model.layers, None, Policy.FORWARD_METHODS)
    target = tmp_path / "final"
    target.mkdir()
    (target / "stale.txt").write_text("from an older run")  # replaced whole, never merged
    save_checkpoint(policy, tokenizer, target, torch.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert not (target / "stale.txt").exists()
    loaded = AutoModelForCausalLM.from_pretrained(target)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)
    assert json.loads((target / "config.json").read_text())["tie_word_embeddings"] is True


def test_a_second_run_into_the_same_dir_stops_unless_told(tmp_path):
    """A new run never touches an earlier run's files, unless --overwrite (and then only once its
    setup succeeded). Resuming is tested in test_resilience.py."""
    common = [*TINY, "--steps", "3", "--save-every", "2", "--rollout.max-new-tokens", "12", "--rollout.prompts-per-step", "4"]

    def run(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "--output-dir", str(out), *extra],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert run(tmp_path / "a").returncode == 0
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().count("\n")
    again = run(tmp_path / "a")
    assert again.returncode != 0 and "--overwrite" in again.stderr.splitlines()[-1]
    broken = run(tmp_path / "a", "--overwrite", "--data.synthetic", "0", "--data.path", str(tmp_path / "missing.jsonl"))
    assert broken.returncode != 0  # setup failed, so the run it was to replace is untouched
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == lines
    assert (tmp_path / "a" / "checkpoint-2" / "train_state" / "trainer.pt").is_file()
    assert not (tmp_path / "a" / "final" / "train_state").exists()
    assert run(tmp_path / "a", "--overwrite", "--steps", "1").returncode == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 1 and not (tmp_path / "a" / "checkpoint-2").exists()

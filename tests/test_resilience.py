"""Runs that survive, for both trainers (GRPO and the reward model, one run layer: socialr1/run.py):
SIGKILL at any moment (mid-checkpoint too) and `--resume auto` give the uninterrupted run's weights
bitwise (GRPO with a warm start too: its KL reference is restored); SIGTERM on one of 2 gloo ranks
stops both with a checkpoint, and SIGTERM to torchrun in the middle of a 60-second step leaves one
within torchrun's 30-second grace; non-finite steps and failing reward services are skipped on every
rank; every bad input is one line and exit status 1. Real processes, made to fail at named points by
tests/hooked_train.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from socialr1.config import RewardConfig
from socialr1.prompts import prefilled
from socialr1.rewards import SIPReward
from socialr1.sip import SIPFormat
from tests.test_distributed import TINY, torchrun

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = ROOT.parent / "shared" / "tokenizers" / "qwen3"
COMMON = [*TINY, "--steps", "4", "--rollout.max-new-tokens", "12", "--rollout.prompts-per-step", "4",
          "--optim.warmup-steps", "3", "--optim.schedule", "cosine"]
RM_COMMON = ["reward-model", "rm-demo", "--data.synthetic", "48", "--data.eval-synthetic", "0", "--model.tiny-hidden-size", "32",
             "--model.tiny-vocab-size", "400", "--pairs-per-step", "8", "--token-budget", "1500", "--steps", "4",
             "--optim.warmup-steps", "3", "--optim.schedule", "cosine"]
RUNS = {"grpo": COMMON, "grpo-warm-start": [*COMMON, "--warmstart.steps", "3"], "reward-model": RM_COMMON}
ARCHITECTURE = {"grpo": "Qwen3ForCausalLM", "grpo-warm-start": "Qwen3ForCausalLM", "reward-model": "Qwen3ForSequenceClassification"}
NOT_COMPARED = ("time", "time/", "throughput/")  # wall-clock values differ between any two runs


def train(out: Path, *extra: str, hooks: dict | None = None, kind: str = "grpo") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tests" / "hooked_train.py"), json.dumps(hooks or {}), *RUNS[kind],
           "--output-dir", str(out), *extra]
    # One thread: on a shared 2-core machine more threads spin against each other (3x slower here).
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(checkpoint.glob("*.safetensors")) for k, v in load_file(f).items()}


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return bool(wa) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run of each kind, on 1 rank (checkpoints every 2 steps) or 2, made once."""
    made: dict[tuple[str, int], Path] = {}

    def get(kind: str, ranks: int = 1) -> Path:
        if (kind, ranks) not in made:
            out = tmp_path_factory.mktemp(f"straight-{kind}-{ranks}") / "run"
            if ranks == 1:
                done = train(out, "--save-every", "2", kind=kind)
                assert done.returncode == 0, done.stderr[-3000:]
            else:
                torchrun(2, "train.py", [*TWO_RANKS[kind], "--output-dir", str(out)], out.parent)
            made[kind, ranks] = out
        return made[kind, ranks]

    return get


@pytest.mark.parametrize("kind", list(RUNS))
def test_sigkill_mid_checkpoint_then_resume_auto_is_the_uninterrupted_run(kind, straight, tmp_path):
    out = tmp_path / "run"
    killed = train(out, "--save-every", "1", "--keep-last", "2", hooks={"kill_in_save": "checkpoint-3"}, kind=kind)
    assert killed.returncode == -9
    assert sorted(p.name for p in out.iterdir()) == [".checkpoint-3.partial", "checkpoint-1", "checkpoint-2", "metrics.jsonl", "tb"]
    assert [r["step"] for r in rows(out)] == [0, 1, 2]

    resumed = train(out, "--save-every", "1", "--keep-last", "2", "--resume", "auto", kind=kind)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in resumed.stdout
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # --keep-last 2
    assert same_weights(straight(kind) / "final", out / "final")
    assert [r["step"] for r in rows(out)] == [0, 1, 2, 3]  # step 2 ran twice; it is written once
    for x, y in zip(rows(straight(kind)), rows(out)):
        assert {k: v for k, v in x.items() if not k.startswith(NOT_COMPARED)} == {k: v for k, v in y.items() if not k.startswith(NOT_COMPARED)}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [0, 1, 2, 3]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["dtype"] == "float32" and config["architectures"] == [ARCHITECTURE[kind]]


def test_warm_started_reference_is_restored_on_resume(straight, tmp_path):
    """The KL reference is the warm-started policy in the straight run; a resume must not rebuild it
    from the freshly initialised weights (the final weights would differ: 6.8e-4 seen)."""
    out = tmp_path / "run"
    shutil.copytree(straight("grpo-warm-start") / "checkpoint-2", out / "checkpoint-2")
    assert train(out, "--resume", str(out / "checkpoint-2"), kind="grpo-warm-start").returncode == 0
    assert same_weights(straight("grpo-warm-start") / "final", out / "final")


# On 2 ranks: 3 steps; GRPO checks for a stop at every decode step, the reward model's micro-batches
# hold one pair each (what the slow step below needs; the straight run shares the settings).
TWO_RANKS = {"grpo": [*COMMON, "--steps", "3", "--rollout.check-every", "1"],
             "reward-model": [*RM_COMMON, "--steps", "3", "--token-budget", "300"]}


@pytest.mark.parametrize("kind", ["grpo", "reward-model"])
def test_sigterm_on_one_of_two_ranks_stops_both_with_a_checkpoint(kind, tmp_path):
    """Rank 1 alone is signalled as step 1 begins: rank 0 learns it at the next gate, both drop
    step 1 (no weight had changed), write checkpoint-1 and exit 0."""
    out = tmp_path / "run"
    hooks = json.dumps({"signal_at_step": [1, 1, "SIGTERM", 1]})
    stopped = torchrun(2, "tests/hooked_train.py", [hooks, *TWO_RANKS[kind], "--output-dir", str(out)], tmp_path)
    assert "to resume: torchrun --nproc_per_node 2" in stopped.stdout and "--resume auto" in stopped.stdout
    assert "stopped by signal: dropped step 1" in stopped.stdout
    assert "note: the stop wrote its checkpoint in" in stopped.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "metrics.jsonl", "tb"]
    assert [r["step"] for r in rows(out)] == [0]


@pytest.mark.parametrize("kind", ["grpo", "reward-model"])
def test_sigterm_to_torchrun_during_a_60_second_step_leaves_a_checkpoint_in_its_grace(kind, tmp_path, straight):
    """Step 1 takes 60 s (12 decode steps of 5 s; 4 micro-batches of 15 s). SIGTERM to torchrun
    5 s into it: torchrun forwards it and kills what still runs 30 s later; the ranks drop the step
    and write checkpoint-1 well before. `--resume auto` then ends with the uninterrupted run's weights."""
    out, started = tmp_path / "run", tmp_path / "step-1-started"
    hooks = json.dumps({"slow_step": [1, {"grpo": 5, "reward-model": 15}[kind], str(started)]})
    port = 29500 + (os.getpid() + 7) % 1000
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(ROOT / "tests" / "hooked_train.py"), hooks, *TWO_RANKS[kind], "--output-dir", str(out)]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not started.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(5)
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    stdout, stderr = run.communicate(timeout=120)
    assert time.monotonic() - signalled < 30 and "forcefully exiting" not in stderr, stderr[-3000:]
    assert "stopped by signal: dropped step 1" in stdout, stdout[-2000:] + stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]

    torchrun(2, "tests/hooked_train.py", ["{}", *TWO_RANKS[kind], "--output-dir", str(out), "--resume", "auto"], tmp_path)
    assert same_weights(straight(kind, ranks=2) / "final", out / "final")


def test_second_sigint_exits_at_once(tmp_path):
    done = train(tmp_path / "run", hooks={"signal_at_step": [0, 0, "SIGINT", 2]})
    assert done.returncode == 130 and not list((tmp_path / "run").glob("checkpoint-*"))


def _same_train_state(a: Path, b: Path, tmp: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    states = []
    for d in (a, b):
        dcp_to_torch_save(d / "train_state", tmp / f"{d.name}.pt")
        states.append(torch.load(tmp / f"{d.name}.pt", weights_only=False))
    assert states[0]["model"].keys() == states[1]["model"].keys()
    assert all(torch.equal(states[0]["model"][k], states[1]["model"][k]) for k in states[0]["model"])
    for k, v in states[0]["optim"]["state"].items():
        assert all(torch.equal(v[s], states[1]["optim"]["state"][k][s]) for s in v), k


def test_non_finite_loss_and_failing_reward_services_skip_the_step_and_k_in_a_row_stop_the_run(tmp_path):
    """Step 1: NaN loss; step 2: 3/4 of the completions unscored, above the 0.5 allowed (step 0's 1/4
    is below it). Both skips leave weights and optimizer state as they were; two in a row stop."""
    out = tmp_path / "run"
    hooks = {"nan_loss_steps": [1], "failed_frac": {"0": 0.25, "2": 0.75}}
    done = train(out, "--save-every", "1", "--max-skipped-steps", "2", "--max-reward-failure-rate", "0.5", hooks=hooks)
    assert done.returncode == 1
    assert last_line(done) == ("error: 2 steps in a row skipped (reward services failed on more than "
                               "--max-reward-failure-rate 0.5); weights were left as they were. "
                               f"Last good checkpoint: {out / 'checkpoint-2'}")
    assert [(r["train/skipped_steps"], r.get("reward/failed_frac"), "loss" in r) for r in rows(out)] == [
        (0, 0.25, True), (1, None, True), (2, 0.75, False)]
    _same_train_state(out / "checkpoint-1", out / "checkpoint-2", tmp_path)  # the NaN step changed nothing
    assert not (out / "checkpoint-3").exists()


def test_reward_model_skips_a_non_finite_step_and_k_in_a_row_stop_it(tmp_path):
    out = tmp_path / "run"
    done = train(out, "--save-every", "1", "--max-skipped-steps", "2", hooks={"nan_loss_steps": [1, 2]}, kind="reward-model")
    assert done.returncode == 1
    assert last_line(done) == ("error: 2 steps in a row skipped (non-finite loss or grad norm); weights were left as "
                               f"they were. Last good checkpoint: {out / 'checkpoint-2'}")
    assert [r["train/skipped_steps"] for r in rows(out)] == [0, 1, 2]
    _same_train_state(out / "checkpoint-1", out / "checkpoint-2", tmp_path)


def test_export_config_states_the_saved_dtype(tmp_path, tokenizer, lm, world):
    from socialr1 import distributed as D
    from socialr1.checkpoint import save_checkpoint
    from socialr1.policy import Policy

    policy = Policy(lm)
    D.shard(policy, lm.model.layers, None, Policy.FORWARD_METHODS)
    save_checkpoint(policy, tokenizer, tmp_path / "final", torch.bfloat16)
    assert json.loads((tmp_path / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {w.dtype for w in weights(tmp_path / "final").values()} == {torch.bfloat16}


def test_saved_config_names_the_class_trained_from_a_loaded_model(tmp_path, data_file, tokenizer, lm, world, capsys):
    """vLLM and other servers pick the model class from config.json's `architectures`: a policy
    saves its causal LM class, a reward model started from a causal LM saves the classifier's.
    Trained on ToMBench rows (when ../shared/data has them), the run warns at start-up that its
    items are benchmark items."""
    import train as train_py

    model = tmp_path / "model"
    lm.save_pretrained(model)
    tokenizer.save_pretrained(model)
    tombench = ROOT.parent / "shared" / "data" / "tombench" / "False Belief Task.jsonl"
    if tombench.is_file():
        data_file.write_text("".join(tombench.read_text().splitlines(keepends=True)[:4]))
    small = ["--model.name-or-path", str(model), "--steps", "1", "--device", "cpu", "--save-every", "0"]
    train_py.main(["socialr1-4b", *small, "--data.path", str(data_file), "--rollout.prompts-per-step", "2",
                   "--rollout.max-new-tokens", "4", "--output-dir", str(tmp_path / "grpo")])
    warned = "warning: training items are evaluation benchmark items (4 of 4 in tombench)" in capsys.readouterr().out
    assert warned == tombench.is_file()
    train_py.main(["reward-model", "rm-qwen3-4b", *small, "--data.synthetic", "16", "--pairs-per-step", "4",
                   "--output-dir", str(tmp_path / "rm")])
    for run, name in (("grpo", "Qwen3ForCausalLM"), ("rm", "Qwen3ForSequenceClassification")):
        assert json.loads((tmp_path / run / "final" / "config.json").read_text())["architectures"] == [name]


# ---- bad input: one line, exit status 1, before expensive work --------------------------------------
def run_main(*argv: str) -> str:
    import train as train_py

    with pytest.raises(SystemExit) as stop:
        train_py.main(list(argv))
    assert isinstance(stop.value.code, str) and "\n" not in stop.value.code  # sys.exit(str): status 1, one line
    return stop.value.code


@pytest.fixture()
def data_file(tmp_path, items) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"STORY": it.story, "QUESTION": it.question, "OPTION-A": it.options[0],
                                        "OPTION-B": it.options[1], "答案\nANSWER": "A"}) + "\n" for it in items[:4]))
    return path


def test_bad_input_missing_model_path(tmp_path, data_file):
    msg = run_main("socialr1-4b", "--model.name-or-path", str(tmp_path / "nope"), "--data.path", str(data_file), "--output-dir", str(tmp_path / "o"))
    assert msg == f"error: --model.name-or-path {tmp_path / 'nope'}: no such directory"


def test_bad_input_tokenizer_without_chat_template(tmp_path, data_file, tokenizer, lm):
    model = tmp_path / "model"
    lm.save_pretrained(model)
    tokenizer.save_pretrained(model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    msg = run_main("socialr1-4b", "--model.name-or-path", str(model), "--data.path", str(data_file), "--output-dir", str(tmp_path / "o"))
    assert msg.startswith(f"error: --model.name-or-path {model}: the tokenizer has no chat template")


def test_bad_input_group_size_one():
    assert run_main("demo", "--rollout.group-size", "1") == (
        "error: --rollout.group-size 1: must be at least 2 (advantages compare the samples of a group)")


@pytest.mark.parametrize("flag,value,need", [
    ("--grpo.num-iterations", "0", "at least 1"), ("--rollout.temperature", "0", "above 0"),
    ("--rollout.top-p", "1.5", "in (0, 1]"), ("--rollout.top-k", "-1", "at least 0"), ("--grpo.eps-low", "1", "in [0, 1)"),
    ("--grpo.micro-batch-size", "0", "at least 1"), ("--optim.lr", "0", "above 0"), ("--steps", "0", "at least 1")])
def test_bad_setting_names_the_flag(flag, value, need):
    msg = run_main("demo", flag, value)
    assert msg.startswith(f"error: {flag} {value}") and f"must be {need}" in msg


def test_bad_input_prompts_per_step_not_divisible_by_ranks(tmp_path):
    done = torchrun(2, "train.py", [*TINY, "--rollout.prompts-per-step", "3", "--output-dir", str(tmp_path / "o")], tmp_path, check=False)
    assert done.returncode != 0
    assert done.stderr.count("error: --rollout.prompts-per-step 3 must divide by the 2 ranks") == 1  # rank 0 alone says it
    # torchrun prints its own traceback for a failed worker; none comes from a frame of ours
    assert f'File "{ROOT}' not in done.stderr and not (tmp_path / "o").exists()


def test_bad_input_every_item_too_long(tmp_path):
    msg = run_main(*TINY, "--data.max-prompt-tokens", "5", "--output-dir", str(tmp_path / "o"))
    assert msg == "error: no training item fits in --data.max-prompt-tokens 5"


def test_bad_input_empty_data_file_and_folder(tmp_path):
    (tmp_path / "empty.jsonl").touch()
    (tmp_path / "folder").mkdir()
    out = ["--output-dir", str(tmp_path / "o")]
    assert run_main("socialr1-4b", "--data.path", str(tmp_path / "empty.jsonl"), *out) == "error: empty.jsonl: empty file"
    assert run_main("socialr1-4b", "--data.path", str(tmp_path / "folder"), *out) == (
        f"error: {tmp_path / 'folder'}: no .jsonl/.json/.csv/.parquet files in this folder")


def test_bad_input_unwritable_output_dir(tmp_path):
    (tmp_path / "file").touch()
    msg = run_main("demo", "--output-dir", str(tmp_path / "file" / "run"))
    assert msg == f"error: --output-dir {tmp_path / 'file' / 'run'}: cannot write there ({tmp_path / 'file'} is not a writable directory)"


def test_bad_input_reward_model_path(tmp_path):
    msg = run_main("demo", "--reward.rm.path", str(tmp_path / "rm"), "--output-dir", str(tmp_path / "o"))
    assert msg == f"error: --reward.rm.path {tmp_path / 'rm'}: no such directory"


def test_bad_input_unreachable_judge_and_scoring_endpoint(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        judge = ("--reward.formula", "social-r1", "--reward.structure", "judge", "--reward.judge.model", "j")
        msg = run_main("demo", *judge, "--reward.judge.base-url", url, "--output-dir", str(tmp_path / "o"))
        assert msg.startswith(f"error: --reward.judge.base-url {url}: cannot be reached (")
        msg = run_main("demo", "--reward.content", "endpoint", "--reward.rm.url", url, "--output-dir", str(tmp_path / "o"))
        assert msg.startswith(f"error: --reward.rm.url {url}: cannot be reached (")
    assert not (tmp_path / "o").exists()


def test_bad_input_resume_without_training_state(tmp_path):
    msg = run_main("demo", "--resume", str(tmp_path), "--output-dir", str(tmp_path / "o"))
    assert msg.startswith(f"error: --resume {tmp_path}: no train_state/ (training state) in it")


def test_bad_input_resume_with_other_shapes(straight, tmp_path):
    shutil.copytree(straight("grpo") / "checkpoint-2", tmp_path / "checkpoint-2")
    msg = run_main(*COMMON, "--model.tiny-hidden-size", "32", "--resume", str(tmp_path / "checkpoint-2"),
                   "--output-dir", str(tmp_path / "o"))
    assert msg == (f"error: --resume {tmp_path / 'checkpoint-2'}: the checkpoint was trained with other shapes: "
                   "--model.tiny-hidden-size 64 (now 32)")


# ---- SIP markers on the real Qwen3 tokenizer -----------------------------------------------------------
def _variant(tmp: Path, name: str) -> Path:
    """The Qwen3 tokenizer files with <think> / </think> marked special, or with a template whose
    generation prompt opens the think block."""
    from transformers import AutoTokenizer

    path = tmp / name
    shutil.copytree(QWEN3, path)
    if name == "think-special":
        for file, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
            data = json.loads((path / file).read_text())
            entries = data[key] if isinstance(data[key], list) else data[key].values()
            for entry in entries:
                entry["special"] |= entry["content"] in ("<think>", "</think>")
            (path / file).write_text(json.dumps(data))
        return path
    tok = AutoTokenizer.from_pretrained(path)
    template = tok.chat_template.replace("{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}")
    assert template != tok.chat_template
    tok.chat_template = template
    tok.save_pretrained(path)
    return path


@pytest.mark.skipif(not QWEN3.is_dir(), reason=f"no Qwen3 tokenizer replica at {QWEN3}")
@pytest.mark.parametrize("variant", ["qwen3", "think-special", "prefills-think"])
def test_qwen3_tokenizer_variants_give_format_one_to_a_well_formed_trace(variant, tmp_path, items):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(QWEN3 if variant == "qwen3" else _variant(tmp_path, variant))
    fmt = SIPFormat()
    think = tok.convert_tokens_to_ids("<think>")
    assert tok.added_tokens_decoder[think].special == (variant == "think-special")
    prefix = prefilled(tok, fmt)
    assert prefix == ("<think>\n" if variant == "prefills-think" else "")
    item = items[0]
    completion = fmt.render(item.gold_stages, item.answer_letter).removeprefix(prefix)
    reward = SIPReward(tok, RewardConfig(), fmt=fmt, prefix=prefix)
    scores = reward.score_texts([completion], [item.answer_letter], [item.story], step=0,
                                questions=[item.question], options=[item.options])
    assert scores["format"].item() == 1.0 and scores["accuracy"].item() == 1.0

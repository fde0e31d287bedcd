"""The SIP content reward model: generated pairs, the shared input template, pair files and their
errors, training (loss down, resume exact), checkpoints scored as GRPO scores them, and one step
on 2 gloo ranks equal to 1."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from socialr1.data import DataError
from socialr1.reward_model import inputs
from socialr1.reward_model.config import parse
from socialr1.reward_model.pairs import FILLER, KINDS, Pair, PairFields, generate_pairs, load_pairs, synthetic_splits, write_jsonl
from socialr1.reward_model.trainer import RMTrainer, pair_metrics
from socialr1.rewards.config import RewardModelConfig
from socialr1.rewards.content import RewardModel, rm_input
from socialr1.sip import SIPFormat
from tests.test_distributed import torchrun

ROOT = Path(__file__).resolve().parents[1]
FMT = SIPFormat()
TINY = ["rm-demo", "--data.synthetic", "48", "--data.eval-synthetic", "16", "--model.tiny-hidden-size", "32",
        "--model.tiny-vocab-size", "400", "--pairs-per-step", "8", "--token-budget", "1500", "--optim.warmup-steps", "2",
        "--loss.margin", "0.1", "--loss.center", "0.01"]


@pytest.fixture()
def one_thread():
    """Tiny models run faster on one thread, and far faster on a machine whose cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _stage(text: str, k: int) -> str:
    """The text of stage k in a think text ('' if absent)."""
    m = re.search(rf"{FMT.stage_header(k)} (.*)", text)
    return m.group(1) if m else ""


def test_generated_pairs_corrupt_the_gold_trace_in_the_recorded_way():
    train, held_out = synthetic_splits(160, 48, seed=3, fmt=FMT)
    assert {p.kind for p in train} == set(KINDS) and {p.kind for p in held_out} == set(KINDS)
    assert not {p.story for p in held_out} & {p.story for p in train}
    assert generate_pairs(40, seed=3) == train[:40]  # seeded
    for p in train:
        assert p.chosen != p.rejected
        headers = [h for h in re.findall(r"^([A-Z][a-z]+ [A-Z][a-z]+):", p.rejected, re.M)]
        gold_interp, bad_interp = _stage(p.chosen, 1), _stage(p.rejected, 1)
        if p.kind == "skipped_stage":
            assert len(headers) == 3
        elif p.kind == "stage_order":
            assert sorted(headers, key=FMT.stages.index) != headers
        else:
            assert headers == list(FMT.stages)
        if p.kind == "wrong_character":
            asked = set(re.findall(r"[A-Z][a-z]+", p.question)) - {"Where"}
            assert set(re.findall(r"[A-Z][a-z]+", bad_interp)) - asked - {"Together"}
        if p.kind == "true_location":
            final = re.findall(r"moves the \w+ to the (\w+)\.", p.story)[-1]
            assert bad_interp.count(final) > gold_interp.count(final)
        if p.kind == "option_in_cue_encoding":
            assert re.match(r"Option [A-D], the \w+", _stage(p.rejected, 0))
        if p.kind == "backwards":
            assert bad_interp.startswith("Option ") and "is the answer" in bad_interp
        if p.kind == "story_copy":
            assert any(_stage(p.rejected, k) == p.story for k in range(4))
        if p.kind == "filler":
            assert any(set(re.split(r"(?<=\.) ", _stage(p.rejected, k))) <= set(FILLER) for k in range(4))


def test_template_cuts_stages_and_batched_scores_equal_one_by_one(tokenizer, one_thread):
    think = "Cue Encoding: a saw b.\nCue Interpretation: a thinks b.\nGoal Clarification: where.\nResponse Generation: B."
    assert inputs.stage_segments(think, FMT) == think.split("\n")
    assert inputs.stage_segments("no headers here", FMT) == ["no headers here"]
    assert len(inputs.reward_inputs("S.", "Q?", think, "stage", FMT)) == 4
    assert inputs.reward_inputs("S.", "Q?", think, "think", FMT) == [rm_input("S.", "Q?", think)]
    assert inputs.budget_groups([2, 2, 2, 1], [10, 10, 30, 5], 60) == [[0, 1], [2], [3]]

    from socialr1 import tiny

    torch.manual_seed(0)
    from socialr1.reward_model.trainer import classifier_from_causal

    rm = classifier_from_causal(tiny.build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=4)).eval()
    rm.config.pad_token_id = tokenizer.pad_token_id
    head = inputs.RewardHead(rm)
    pairs = generate_pairs(6, seed=1)
    for unit in ("think", "stage"):
        cfg = inputs.InputConfig(unit=unit, max_length=120)
        enc = inputs.encode(tokenizer, [p.story for p in pairs], [p.question for p in pairs], [p.rejected for p in pairs], cfg, FMT)
        assert all(len(ids) <= 120 for group in enc for ids in group)
        batched = inputs.score(head, enc, tokenizer.pad_token_id, 4000, torch.device("cpu"))
        alone = torch.cat([inputs.score(head, [g], tokenizer.pad_token_id, 1, torch.device("cpu")) for g in enc])
        torch.testing.assert_close(batched, alone, atol=2e-5, rtol=0)


def test_pair_files_load_with_mapped_fields_and_bad_rows_name_file_row_field(tmp_path):
    pairs = generate_pairs(5, seed=2)
    write_jsonl(pairs, tmp_path / "p.jsonl")
    assert load_pairs(str(tmp_path / "p.jsonl")) == [Pair(**{**p.__dict__, "source": f"p.jsonl:{i}"}) for i, p in enumerate(pairs, 1)]
    import pandas as pd

    frame = pd.DataFrame([{"Q": p.question, "good": p.chosen, "bad": p.rejected} for p in pairs])
    frame.to_parquet(tmp_path / "p.parquet")
    got = load_pairs(str(tmp_path / "p.parquet"), PairFields(question="Q", chosen="good", rejected="bad"))
    assert [(g.story, g.options, g.chosen) for g in got] == [("", (), p.chosen) for p in pairs]
    rows = [json.dumps({"question": "q", "chosen": "a", "rejected": "b"}), json.dumps({"question": "q", "chosen": "a"})]
    (tmp_path / "bad.jsonl").write_text("\n".join(rows))
    with pytest.raises(DataError, match=r"^bad.jsonl: row 2: field 'rejected': missing$"):
        load_pairs(str(tmp_path / "bad.jsonl"))
    (tmp_path / "same.jsonl").write_text(json.dumps({"question": "q", "chosen": "a", "rejected": "a", "options": ["x", "y"]}))
    with pytest.raises(DataError, match=r"^same.jsonl: row 1: field 'rejected': the same text as the chosen one$"):
        load_pairs(str(tmp_path / "same.jsonl"))
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "reward-model", "rm-demo", "--data.synthetic", "0", "--data.path",
                           str(tmp_path / "bad.jsonl"), "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "error: bad.jsonl: row 2: field 'rejected': missing"


def test_training_lowers_the_loss_and_grpo_scoring_of_the_checkpoint_matches_eval(tmp_path, world, one_thread):
    cfg = parse([*TINY, "--steps", "8", "--optim.lr", "3e-3", "--model.activation-checkpointing", "--output-dir", str(tmp_path / "run")])
    trainer = RMTrainer(cfg)
    trainer.setup()
    zero = trainer.eval_scores()
    before = pair_metrics(zero, trainer.loss(zero))
    assert trainer.train()
    result, eval_scores = trainer.final_eval, trainer.eval_scores()
    trainer.close()
    assert before["loss"] == pytest.approx(math.log1p(math.exp(0.1)), abs=1e-6)  # zero head: scores 0, -log sigmoid(-margin)
    assert result["loss"] < before["loss"] - 0.05
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "accuracy", "margin/mean", "margin/std", "score/mean", "score/std", "lr", "grad_norm"):
        assert key in rows[1], key
    kinds = {p.kind for p in trainer.eval_pairs}
    assert len(kinds) >= 6 and {f"eval/accuracy/{k}" for k in kinds} <= set(rows[-1])

    final = tmp_path / "run" / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert inputs.InputConfig.of(model) == cfg.input
    held = trainer.eval_pairs
    stories = [p.story for p in held for _ in range(2)]
    questions = [p.question for p in held for _ in range(2)]
    thinks = [t for p in held for t in (p.chosen, p.rejected)]
    scores = inputs.score_texts(inputs.RewardHead(model), tokenizer, inputs.InputConfig.of(model), FMT, stories, questions, thinks,
                                4096, torch.device("cpu"))
    torch.testing.assert_close(scores.view(-1, 2), eval_scores, atol=1e-5, rtol=0)
    # The GRPO content reward (--reward.content model) loads the checkpoint and scores the same texts alike.
    grpo = RewardModel(RewardModelConfig(path=str(final), dtype="float32"), torch.device("cpu"))
    texts = [rm_input(s, q, t.strip()) for s, q, t in zip(stories, questions, thinks)]
    torch.testing.assert_close(grpo(texts).float().view(-1, 2), eval_scores, atol=1e-5, rtol=0)


def test_resume_continues_bitwise(tmp_path, world, one_thread):
    from safetensors.torch import load_file

    common = [*TINY, "--steps", "4", "--save-every", "2", "--optim.schedule", "cosine"]

    def run(out: str, *extra: str) -> list[dict]:
        trainer = RMTrainer(parse([*common, "--output-dir", str(tmp_path / out), *extra]))
        trainer.train()
        trainer.close()
        return [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    straight = run("a")
    resumed = run("b", "--resume", str(tmp_path / "a" / "checkpoint-2"))
    assert [r["step"] for r in resumed] == [2, 3, 4]  # two steps, then the final held-out eval
    for a, b in zip(straight[2:], resumed):
        assert {k: v for k, v in a.items() if not k.startswith("time")} == {k: v for k, v in b.items() if not k.startswith("time")}
    def weights(run: str) -> dict[str, torch.Tensor]:
        return {k: v for f in sorted((tmp_path / run / "final").glob("*.safetensors")) for k, v in load_file(f).items()}

    wa, wb = weights("a"), weights("b")
    assert wa and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("loss", [[], ["--loss.dense"]], ids=["last-token", "dense"])
def test_one_step_same_on_one_and_two_ranks(tmp_path, world, one_thread, loss):
    """Two optimizer steps (the first moves only the zero-initialised head, the second the whole
    model) on 1 rank (in-process) and on 2 gloo ranks (torchrun), micro-batched by a budget that
    splits each rank's pairs; with the pairwise loss at the last token, and over the texts' shared
    ending (--loss.dense, which reads every token's score through the sharded head)."""
    from tests.rm_dist_step import first_steps

    args = [*TINY, "--steps", "2", "--optim.lr", "1e-3", *loss]
    trainer = RMTrainer(parse([*args, "--output-dir", str(tmp_path / "run1")]))
    one = first_steps(trainer)
    torchrun(2, "tests/rm_dist_step.py", [str(tmp_path / "r2.pt"), *args, "--output-dir", str(tmp_path / "run2")], tmp_path)
    two = torch.load(tmp_path / "r2.pt")
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        for key in ("loss", "accuracy", "margin/mean", "score/std", "grad_norm"):
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), key
    assert one["micro_batches"] > 1 and two["micro_batches"] > 1
    for name, w in one["state"].items():
        torch.testing.assert_close(w, two["state"][name], atol=5e-5, rtol=0, msg=name)


def test_trained_checkpoint_scores_gold_traces_of_unseen_items_above_their_corruptions(tmp_path, world, one_thread):
    """The direction of the Bradley-Terry loss, seen apart from the trainer's own loss and accuracy
    (both come from one margin, so a flipped margin would still show a falling loss and a rising
    accuracy): GRPO's RewardModel loads the checkpoint and ranks the gold trace of items no
    training pair has above its corruption."""
    import train

    training = generate_pairs(96, seed=0)
    write_jsonl(training, tmp_path / "train.jsonl")
    train.main(["reward-model", *TINY, "--data.synthetic", "0", "--data.path", str(tmp_path / "train.jsonl"),
                "--data.eval-synthetic", "8", "--steps", "16", "--optim.lr", "3e-3", "--output-dir", str(tmp_path / "run")])
    unseen = generate_pairs(48, seed=777, exclude={p.story for p in training})
    assert len(unseen) == 48 and not {p.story for p in unseen} & {p.story for p in training}
    grpo = RewardModel(RewardModelConfig(path=str(tmp_path / "run" / "final"), dtype="float32"), torch.device("cpu"))
    scores = grpo([rm_input(p.story, p.question, t) for p in unseen for t in (p.chosen, p.rejected)]).float().view(-1, 2)
    # 0.83 seen after these 16 steps; chance is 0.5, and a loss that prefers the rejected text ranks ~0.2.
    assert (scores[:, 0] > scores[:, 1]).float().mean() >= 0.7
    assert (scores[:, 0] - scores[:, 1]).mean() > 0


def test_held_out_pairs_share_no_story_with_the_training_pairs(tmp_path, world, one_thread):
    """Training on the folder the pairs CLI wrote (train.jsonl and eval.jsonl, seed 0): the held-out
    pairs the reward-model run generates (seed 0 too) must still come from other stories, not
    from eval.jsonl's, which training now sees."""
    from socialr1.reward_model.pairs import main as write_pairs

    write_pairs(tmp_path / "pairs", train=40, eval=16, seed=0)
    trainer = RMTrainer(parse([*TINY, "--data.synthetic", "0", "--data.path", str(tmp_path / "pairs"),
                               "--data.eval-synthetic", "16", "--output-dir", str(tmp_path / "run")]))
    trainer.setup()
    assert len(trainer.pairs) == 56 and len(trainer.eval_pairs) == 16
    assert not {p.story for p in trainer.eval_pairs} & {p.story for p in trainer.pairs}
    trainer.close()

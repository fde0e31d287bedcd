"""The demo: warm-start traces without answer signal, its items and prompt, the curves it draws, and
GRPO raising its held-out accuracy."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image

from socialr1.items import LETTERS
from socialr1.plots import plot_curves
from socialr1.prompts import user_message
from socialr1.sip import SIPFormat
from socialr1.synthetic import CONTAINERS, generate_items
from socialr1.warmstart import gold_completions

ROOT = Path(__file__).resolve().parents[1]


def test_random_answer_traces_keep_the_reasoning_and_choose_at_random(tokenizer):
    fmt = SIPFormat()
    items = generate_items(400, seed=3)
    texts = tokenizer.batch_decode(gold_completions(tokenizer, items, fmt, random_answers=0))
    gold = tokenizer.batch_decode(gold_completions(tokenizer, items, fmt))
    hits = 0
    for it, text, g in zip(items, texts, gold):
        letter = re.search(r"<Answer>([A-D])</Answer>", text).group(1)
        assert f"the {it.options[LETTERS.index(letter)]}: option {letter}." in text
        head = text.split(fmt.stage_header(3))[0]
        assert head == g.split(fmt.stage_header(3))[0]  # the first three stages are the gold ones
        hits += letter == it.answer_letter
    assert 0.18 < hits / len(items) < 0.32  # chance with four options
    assert gold_completions(tokenizer, items, fmt, random_answers=0) == gold_completions(tokenizer, items, fmt, random_answers=0)


def test_demo_items_offer_four_places_in_one_order_and_keep_their_answers():
    items = generate_items(300, seed=5, containers=4, fixed_options=True)
    assert {it.options for it in items} == {CONTAINERS[:4]}
    shuffled = generate_items(300, seed=5, containers=4)
    assert {frozenset(it.options) for it in shuffled} == {frozenset(CONTAINERS[:4])} and len({it.options for it in shuffled}) > 1
    for it in items:  # the answer is still the place the gold reasoning arrives at
        assert f"the {it.options[it.answer]}: option {it.answer_letter}." in it.gold_stages[-1]
        assert it.options[it.answer] in it.story
    assert generate_items(50, seed=5) == generate_items(50, seed=5, containers=len(CONTAINERS))


def test_brief_instruction_names_every_stage_and_tag_in_a_third_of_the_words():
    item = generate_items(1, seed=0)[0]
    full, brief = SIPFormat(), SIPFormat(instruction="brief")
    text = user_message(item, brief)
    assert all(part in text for part in (*brief.stages, "<think>", "</think>", "<Answer>", "</Answer>", item.story))
    assert len(text.split()) - len(item.story.split()) < 0.5 * (len(user_message(item, full).split()) - len(item.story.split()))


def test_curves_png_shows_rewards_and_eval_accuracy(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.25, "eval/accuracy/Reality": 0.3, "eval/chance": 0.25}]
    rows += [{"step": s, **{f"reward/{k}/mean": 0.1 * s for k in ("total", "format", "accuracy")}} for s in range(5)]
    rows += [{"step": 5, "eval/accuracy": 0.5, "eval/accuracy/Reality": 0.6, "eval/chance": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    png = tmp_path / "plots" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert width > height > 300


def test_short_demo_reports_accuracy_per_item_type_and_draws_its_curves(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "demo", "--steps", "2", "--eval-every", "1", "--warmstart.steps", "10",
         "--data.synthetic", "48", "--data.eval-synthetic", "24", "--model.tiny-hidden-size", "64",
         "--model.tiny-vocab-size", "600", "--rollout.prompts-per-step", "4", "--rollout.group-size", "2",
         "--rollout.max-new-tokens", "16", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    kinds = {k.split("/", 2)[2] for k in evals[0] if k.startswith("eval/accuracy/")}
    assert kinds == {"False Belief: first order", "False Belief: second order", "False Belief: third order",
                     "False Belief: fourth order", "True Belief: control", "Reality"}
    assert evals[0]["eval/n"] == 24 and evals[0]["eval/chance"] == 0.25
    assert "True Belief: control" in done.stdout  # the per-type line of each eval
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(png).ndim == 3


def test_grpo_raises_the_demos_held_out_accuracy(tmp_path):
    """The demo shortened to 20 GRPO steps (same warm start, items, model and seed): greedy accuracy
    on the 128 held-out items ends above where GRPO started. A check of the direction, not of time."""
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "demo", "--steps", "20", "--eval-every", "20", "--sample-every", "0",
         "--output-dir", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 20]
    assert evals[1]["eval/accuracy"] > evals[0]["eval/accuracy"] + 0.05, [r["eval/accuracy"] for r in evals]

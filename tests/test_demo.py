"""The demo's parts: warm-start traces without answer signal, and the curves it draws."""

import json
import re

import matplotlib.image

from socialr1.items import LETTERS
from socialr1.plots import plot_curves
from socialr1.sip import SIPFormat
from socialr1.synthetic import generate_items
from socialr1.warmstart import gold_completions


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

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from socialr1.evaluate import evaluate
from socialr1.models import stop_token_ids
from socialr1.prompts import encode_prompts
from socialr1.rewards import RewardConfig, SIPReward
from socialr1.sip import SIPFormat

ROOT = Path(__file__).resolve().parents[1]


def test_eval_cli_reports_accuracy_per_ability(tmp_path, tokenizer, lm, items):
    lm.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = [{"STORY": it.story, "QUESTION": it.question, "options": list(it.options), "gold": it.answer_letter,
             "kind": it.ability} for it in items[:5]]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), "--model", str(tmp_path / "model"), "--data", str(tmp_path / "items.jsonl"),
         "--fields.options", "options", "--fields.answer", "gold", "--fields.ability", "kind", "--max-new-tokens", "8",
         "--batch-size", "2", "--output", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["n"] == 5 and 0 <= result["accuracy"] <= 1
    assert {f"accuracy/{it.ability}" for it in items[:5]} <= set(result)
    assert "overall" in done.stdout


def test_eval_cli_names_the_bad_row(tmp_path, tokenizer, lm):
    lm.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "items.jsonl").write_text(json.dumps({"STORY": "s", "QUESTION": "q", "OPTION-A": "x", "OPTION-B": "y",
                                                      "答案\nANSWER": "E"}) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(tmp_path / "model"),
                           "--data", str(tmp_path / "items.jsonl")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: items.jsonl: row 1: field")


class ScriptedLM:
    """A generator that answers each prompt with the completion scripted for it (HF `generate`'s
    contract: the prompt ids followed by the new ids, right-padded)."""

    def __init__(self, script: dict[tuple[int, ...], list[int]], pad_id: int):
        self.script, self.pad_id = script, pad_id

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        new = [self.script[tuple(ids[m.bool()].tolist())][:max_new_tokens] for ids, m in zip(input_ids, attention_mask)]
        width = max(map(len, new))
        tail = torch.tensor([c + [self.pad_id] * (width - len(c)) for c in new], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)


def test_eval_scores_scripted_answers_exactly(tokenizer, items, world):
    """Rows answer gold, a wrong letter in the right format, or nothing: accuracy, format rate and
    per-ability accuracy are exactly the fractions of the script."""
    fmt = SIPFormat()
    chosen = items[:14]
    prompts = encode_prompts(tokenizer, chosen, fmt)
    kinds = ["gold", "wrong", "gold", "empty", "wrong", "gold", "gold"] * 2
    script = {}
    for it, p, kind in zip(chosen, prompts, kinds):
        letter = it.answer_letter if kind == "gold" else "A" if it.answer_letter != "A" else "B"
        text = "" if kind == "empty" else fmt.render(it.gold_stages, letter)
        script[tuple(p)] = tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    reward = SIPReward(tokenizer, RewardConfig(), total_steps=1, fmt=fmt)
    result = evaluate(ScriptedLM(script, tokenizer.pad_token_id), torch.device("cpu"), chosen, prompts, reward,
                      reward.encode_items(chosen), 4, 1000, tokenizer.pad_token_id, stop_token_ids(tokenizer))
    n = len(chosen)
    assert result["n"] == n
    assert result["accuracy"] == pytest.approx(kinds.count("gold") / n)
    assert result["format"] == pytest.approx((kinds.count("gold") + kinds.count("wrong")) / n)
    abilities = {it.ability for it in chosen}
    assert len(abilities) >= 3
    for ability in abilities:
        mine = [k for it, k in zip(chosen, kinds) if it.ability == ability]
        assert result[f"accuracy/{ability}"] == pytest.approx(mine.count("gold") / len(mine)), ability

import json
import subprocess
import sys
from pathlib import Path

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

"""eval.py as a user meets it: a real run of a tiny model over the paper's suite, the counts without a
model, bad rows, and the prompt modes through the real Qwen3 chat template; and the periodic eval's
scoring (`evaluate`) of a scripted generator, exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval import EvalConfig
from eval import main as eval_main
from socialr1 import tiny
from socialr1.data import DataError
from socialr1.evalsets.common import DATA_ROOT
import socialr1.evaluate
from socialr1.evaluate import evaluate
from socialr1.items import MCQItem
from socialr1.models import stop_token_ids
from socialr1.prompts import CARD, COT, DIRECT, encode_prompts, instruction, prompt_text
from socialr1.rewards import RewardConfig, SIPReward
from socialr1.rollout import Rollout, pad_left, stop_mask
from socialr1.sip import SIPFormat

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = ROOT.parent / "shared" / "tokenizers" / "qwen3"
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1"}


def eval_cli(*args: str, ranks: int = 0) -> subprocess.CompletedProcess:
    launch = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                                  f"--master_port={29500 + (os.getpid() + 7) % 1000}"] if ranks else [])
    return subprocess.run([*launch, str(ROOT / "eval.py"), *args], capture_output=True, text=True, timeout=600, env=OFFLINE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("model")
    tiny.build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_suite_run_on_two_ranks_writes_table_results_and_predictions(tmp_path, model_dir, items):
    if not (DATA_ROOT / "tombench").is_dir():
        pytest.skip(f"{DATA_ROOT} is absent (evaluation data lives beside the checkout)")
    rows = [{"STORY": it.story, "QUESTION": it.question, "options": list(it.options), "gold": it.answer_letter,
             "kind": it.ability} for it in items[:5]]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = eval_cli("--model", str(model_dir), "--suite", "social-r1", "--limit", "4", "--max-new-tokens", "4",
                    "--batch-size", "64", "--compare", "--data", str(tmp_path / "mine.jsonl"), "--fields.options",
                    "options", "--fields.answer", "gold", "--fields.ability", "kind", "--output", str(tmp_path / "out"), ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    present = [b for b in ("tombench", "tombench-hard", "socialiqa", "simpletom", "emobench", "motivebench", "hitom",
                           "tactfultom") if (DATA_ROOT / b).is_dir()]
    assert list(results["benchmarks"]) == present + ["mine"]
    assert results["overall"]["present"] == len(present) and set(results["missing"]) == {"tombench-hard", "simpletom"}
    assert results["benchmarks"]["tombench"]["orders"] == 5 and results["benchmarks"]["motivebench"]["orders"] == 6
    for summary in results["benchmarks"].values():
        assert summary["items"] == 4 and 0 <= summary["accuracy"] <= 1 and summary["items_per_s"] > 0
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    # the prompts were split over the two ranks: each (item, order) comes back exactly once
    assert len({(p["benchmark"], p["id"], p["k"]) for p in predictions}) == len(predictions)
    assert len(predictions) == sum(s["completions"] for s in results["benchmarks"].values()) == 4 * (5 + 6 + 5)
    assert {"benchmark", "id", "prompt", "completion", "parsed", "gold", "order"} <= set(predictions[0])
    assert "<|im_start|>user" in predictions[0]["prompt"]
    assert "Overall" in (tmp_path / "out" / "results.md").read_text()
    for text in ("Overall (", "paper: SocialR1-4B", "0.688", "missing from Overall: tombench-hard", "arXiv 2603.09249"):
        assert text in done.stdout, text


def test_inspect_counts_without_a_model(tmp_path, capsys):
    if not (DATA_ROOT / "hitom").is_dir():
        pytest.skip(f"{DATA_ROOT} is absent (evaluation data lives beside the checkout)")
    eval_main(EvalConfig(suite="social-r1", inspect=True, output=str(tmp_path / "counts.json")))
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["benchmarks"]["hitom"] == {"items": 600, "options": {"15": 600}}
    assert counts["benchmarks"]["tombench"]["items"] == 2860
    out = capsys.readouterr().out
    assert "simpletom: missing" in out and "    Belief: 882" in out


def test_bad_row_and_bad_flag_stop_with_one_line(tmp_path):
    (tmp_path / "items.jsonl").write_text(json.dumps({"STORY": "s", "QUESTION": "q", "OPTION-A": "x", "OPTION-B": "y",
                                                      "答案\nANSWER": "E"}) + "\n")
    done = eval_cli("--model", "never-loaded", "--data", str(tmp_path / "items.jsonl"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: items.jsonl: row 1: field")
    with pytest.raises(DataError, match="unknown benchmark 'nosuchbench'; known: tombench, tombench-hard"):
        eval_main(EvalConfig(inspect=True, benchmarks=("nosuchbench",)))
    with pytest.raises(DataError, match="--shuffles must be at least 1"):
        eval_main(EvalConfig(inspect=True, shuffles=0))


@pytest.fixture(scope="module")
def qwen3():
    if not QWEN3.is_dir():
        pytest.skip(f"{QWEN3} is absent (the Qwen3 tokenizer replica lives beside the checkout)")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(QWEN3)


def test_prompt_modes_and_thinking_switch_through_the_qwen3_template(qwen3):
    item, fmt = MCQItem("Sally puts the ball in the box.", "Where will Sally look?", ("box", "basket"), 0), SIPFormat()
    for mode, text in (("sip", instruction(fmt)), ("card", CARD), ("cot", COT), ("direct", DIRECT)):
        on, off = prompt_text(qwen3, item, fmt, mode, True), prompt_text(qwen3, item, fmt, mode, False)
        assert on.startswith(f"<|im_start|>user\n{text}\n\nStory: Sally") and "A. box\nB. basket<|im_end|>" in on
        assert on.endswith("<|im_start|>assistant\n") and off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert CARD.startswith("You should first think about the reasoning process in the mind and then provide with "
                           "the answer.The reasoning process")


def scripted_greedy(script: dict[tuple[int, ...], list[int]]):
    """Stands in for the rollout engine's greedy decoding: each prompt gets the completion scripted
    for it, masked up to its first stop token as the engine masks."""

    def greedy(model, prompts, item_index, max_new_tokens, pad_id, stop_ids):
        new = [script[tuple(p)][:max_new_tokens] for p in prompts]
        width = max(map(len, new))
        comp = torch.tensor([c + [pad_id] * (width - len(c)) for c in new])
        mask = stop_mask(comp, stop_ids) * (torch.arange(width)[None] < torch.tensor([[len(c)] for c in new]))
        ids, pmask = pad_left(prompts, pad_id)
        return Rollout(ids, pmask, comp.masked_fill(mask == 0, pad_id), mask, torch.tensor(list(item_index)))

    return greedy


def test_eval_scores_scripted_answers_exactly(tokenizer, items, world, monkeypatch):
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
    monkeypatch.setattr(socialr1.evaluate, "greedy", scripted_greedy(script))
    result = evaluate(None, chosen, prompts, reward,
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

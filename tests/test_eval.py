"""eval.py as a user meets it: a real run of a tiny model over the paper's suite, the counts without a
model, bad rows and missing data or models (one line naming eval.py's own flags, before a model
loads), completions cut at the token limit, the paper's Overall shown only beside a like Overall, and
the prompt modes through the real Qwen3 chat template; and the periodic eval's scoring (`evaluate`)
of a scripted generator, exactly."""

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import pytest
import torch

import eval as eval_module
from eval import EvalConfig
from eval import main as eval_main
from socialr1 import tiny
from socialr1.data import DataError, FieldMap
from socialr1.evalsets import SUITES, Sources, load, report
from socialr1.evalsets.common import DATA_ROOT
import socialr1.evaluate
from socialr1.evaluate import evaluate
from socialr1.items import MCQItem
from socialr1.models import ModelLoadError, stop_token_ids
from socialr1.prompts import CARD, COT, DIRECT, encode_prompts, instruction, prompt_text
from socialr1.rewards import RewardConfig, SIPReward
from socialr1.rollout import Rollout, pad_left, stop_mask
from socialr1.sip import SIPFormat
from socialr1.synthetic import generate_items

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
    # 6 of the paper's 8 benchmarks: no Overall, and the paper's 8-of-8 Overall rows are not set beside it
    assert results["overall"]["accuracy"] is None
    for text in ("no Overall (6 of the paper's 8 benchmarks here); missing: tombench-hard", "paper rows not shown",
                 "asked on subsets: tombench (first 4 of 2860)"):
        assert text in done.stdout, text
    assert not any(line.startswith(("Overall", "paper: ")) for line in done.stdout.splitlines())
    # 4 new tokens of a random model never reach a stop token: every completion is cut, and it says so
    assert all(p["truncated"] for p in predictions) and results["benchmarks"]["hitom"]["truncated"] == 1.0
    assert "warning: completions cut at --max-new-tokens 4: tombench 100%, socialiqa 100%," in done.stdout
    assert "`--max-new-tokens 4`, `--limit 4`" in (tmp_path / "out" / "results.md").read_text()


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


def write_items(path: Path, items: list[MCQItem]) -> dict:
    """`items` as a JSONL file, and the EvalConfig fields that read it with --data."""
    rows = [{"STORY": it.story, "QUESTION": it.question, "options": list(it.options), "gold": it.answer_letter}
            for it in items]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(data=str(path), fields=FieldMap(options="options", answer="gold"))


def never_load(*args, **kwargs):
    pytest.fail("the model was loaded although there was nothing to evaluate")


def test_nothing_to_evaluate_is_one_line_before_the_model_loads(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub-only benchmarks are missing too, at once
    monkeypatch.setattr(eval_module, "load_pretrained", never_load)
    for asked in (dict(suite="social-r1"), {}):  # the suite, or the default (tombench)
        with pytest.raises(DataError, match=r"^nothing to evaluate: none of the benchmarks asked for is here "
                                            r"\(tombench[,)].*--data-root " + re.escape(str(tmp_path))) as e:
            eval_main(EvalConfig(model=str(model_dir), data_root=str(tmp_path), **asked))
        assert "\n" not in str(e.value)
    done = eval_cli("--model", str(model_dir), "--suite", "social-r1", "--data-root", str(tmp_path))
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith("error: nothing to evaluate")


def test_errors_name_eval_flags(tmp_path, model_dir, monkeypatch, items, world):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    data = write_items(tmp_path / "mine.jsonl", items[:2])
    # a folder that is not here is not asked of the hub
    for missing in ("./SocialR1-4B", "runs/demo/final", str(tmp_path / "SocialR1-4B")):
        with pytest.raises(DataError, match=f"^--model {re.escape(missing)}: no such folder"):
            eval_main(EvalConfig(model=missing, **data))
    # a hub name with no hub: the advice is eval.py's --model, not train.py's --model.name-or-path
    with pytest.raises(ModelLoadError) as e:
        eval_main(EvalConfig(model="Jincenzi/SocialR1-4B", **data))
    assert "--model ./SocialR1-4B" in str(e.value) and "--model.name-or-path" not in str(e.value)
    for name in ("tombench-hard", "simpletom"):
        with pytest.raises(DataError) as e:
            eval_main(EvalConfig(inspect=True, benchmarks=(name,), data_root=str(tmp_path)))
        assert f"pass --{name} {name}" in str(e.value) and "--data.path" not in str(e.value), str(e.value)
    with pytest.raises(DataError) as e:
        eval_main(EvalConfig(inspect=True, data="someone/their-items"))
    assert "pass --data data" in str(e.value) and "--data.path" not in str(e.value), str(e.value)


def test_completions_cut_at_the_limit_are_counted_and_flagged(tmp_path, model_dir, tokenizer, items, monkeypatch,
                                                               capsys, world):
    """Completions that stop early, run past the limit, or stop exactly on the limit's last token:
    only the second kind is cut."""
    limit, fmt = 24, SIPFormat()
    kinds = ["short", "long", "exact", "long", "short", "long"]
    chosen = items[: len(kinds)]
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    words = tokenizer(" the box" * 100, add_special_tokens=False)["input_ids"]
    plan = {"short": tokenizer("<Answer>A</Answer>", add_special_tokens=False)["input_ids"] + [eos],
            "long": words, "exact": words[: limit - 1] + [eos]}
    assert len(plan["short"]) < limit < len(plan["long"])
    prompts = encode_prompts(tokenizer, chosen, fmt)
    script = {tuple(p): plan[k] for p, k in zip(prompts, kinds)}
    monkeypatch.setattr(socialr1.evaluate, "greedy", scripted_greedy(script))
    data = write_items(tmp_path / "mine.jsonl", chosen)
    for n, output in ((None, tmp_path / "all"), (4, tmp_path / "four")):
        results = eval_main(EvalConfig(model=str(model_dir), max_new_tokens=limit, limit=n, output=str(output), **data))
        asked = kinds[: n or len(kinds)]
        assert results["benchmarks"]["mine"]["truncated"] == pytest.approx(asked.count("long") / len(asked))
        predictions = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
        assert [p["truncated"] for p in predictions] == [k == "long" for k in asked]
        warning = f"warning: completions cut at --max-new-tokens {limit}: mine 50% of them"
        assert warning in capsys.readouterr().out and warning in (output / "results.md").read_text()
        settings = f"`--max-new-tokens {limit}`, " + (f"`--limit {n}`" if n else "`--limit` none (every item)")
        assert settings in (output / "results.md").read_text()


def summary(accuracy: float, subset: str = "") -> dict:
    return {"items": 10, "orders": 1, "accuracy": accuracy, "all_orders_correct": accuracy, "parse_failure": 0.0,
            "format": 1.0, "truncated": 0.0, "mean_completion_tokens": 9.0, "items_per_s": 1.0, "categories": {},
            "note": "", "subset": subset}


def test_paper_overall_only_beside_an_overall_of_the_same_eight():
    eight = list(SUITES["social-r1"])
    accuracies = [0.5, 0.6, 0.7, 0.8, 0.4, 0.3, 0.2, 0.9]
    compare = {"source": report.PAPER_SOURCE, "overall": report.PAPER_OVERALL}
    settings = {"max_new_tokens": 64, "limit": None}

    def shown(benchmarks: dict[str, dict]) -> list[str]:
        results = {"model": "m", "mode": "sip", "thinking": "on", "benchmarks": benchmarks, "missing": {},
                   "overall": report.overall(benchmarks), "compare": compare, "settings": settings}
        assert report.markdown(results)  # renders the same rows
        return report.table(results).splitlines()

    full = shown({b: summary(a) for b, a in zip(eight, accuracies)})
    assert any(line.startswith("Overall (8 benchmarks)") and "0.550" in line for line in full)
    assert sum(line.startswith("paper: ") for line in full) == len(report.PAPER_OVERALL)
    subset = shown({b: summary(a, "seeded 4 of 600" if b == "hitom" else "") for b, a in zip(eight, accuracies)})
    assert any(line.startswith("Overall (8 benchmarks, subsets)") for line in subset)
    assert not any(line.startswith("paper: ") for line in subset) and "paper rows not shown" in subset[-1]
    six = shown({b: summary(a) for b, a in zip(eight[:6], accuracies)})
    assert not any(line.startswith(("Overall", "paper: ")) for line in six)


def test_two_benchmarks_make_no_overall(tmp_path, model_dir, tokenizer, monkeypatch, capsys, world):
    if not all((DATA_ROOT / b).is_dir() for b in ("tombench", "hitom")):
        pytest.skip(f"{DATA_ROOT} is absent (evaluation data lives beside the checkout)")
    stop_at_once = defaultdict(lambda: [tokenizer.convert_tokens_to_ids(tokenizer.eos_token)])
    monkeypatch.setattr(socialr1.evaluate, "greedy", scripted_greedy(stop_at_once))
    results = eval_main(EvalConfig(model=str(model_dir), benchmarks=("tombench", "hitom:4"), limit=2, compare=True,
                                   output=str(tmp_path / "out")))
    out = capsys.readouterr().out
    assert results["overall"]["accuracy"] is None and list(results["benchmarks"]) == ["tombench", "hitom"]
    assert not any(line.startswith(("Overall", "paper: ")) for line in out.splitlines())
    assert "paper rows not shown" in out
    assert "no Overall (2 of the paper's 8 benchmarks here)" in out
    assert "asked on subsets: tombench (first 2 of 2860), hitom (first 2 of 4, seeded 4 of 600)" in out


# The option-shuffle protocol as a user meets it: a scripted model that reads each prompt (story,
# question, options in the order shown) and answers by content. Right in 3 of an item's 5 orders, it
# scores 1.0 under the majority vote and 0.6 under the mean, whichever orders it got wrong; and
# predictions.jsonl names, for every completion, the letter the gold option was shown at. On ToMBench
# under its authors' protocol and on generated items with --shuffles.
ORDERS = 5


def head(item: MCQItem) -> str:
    """How a prompt's text ends just before its options (the SIP prompt's layout)."""
    return (f"Story: {item.story}\n" if item.story else "") + f"Question: {item.question}"


def shown_options(prompt: str) -> list[tuple[str, str]]:
    """(letter, text) of the options in the order the prompt shows them."""
    block = prompt.split("\nOptions:\n", 1)[1].split("<|im_end|>", 1)[0]
    return re.findall(r"^([A-Z])\. (.*)$", block, re.MULTILINE)


def which(items: list[MCQItem], prompt: str) -> int:
    before = prompt.split("\nOptions:\n", 1)[0]
    (j,) = [j for j, it in enumerate(items) if before.endswith(head(it))]
    return j


def reader(items: list[MCQItem], wrong_on: Callable[[int], set[int]]):
    """Stands in for eval.py's `complete`: item j's n-th prompt (in the order eval.py asks them) is
    answered with a fixed wrong option when n is in wrong_on(j), else with the gold option, each as
    the letter that option is shown at in that prompt."""

    def complete(lm, tokenizer, prompts, *args, **kwargs):
        asked, texts = Counter(), []
        for ids in prompts:
            prompt = tokenizer.decode(ids)
            j = which(items, prompt)
            gold = items[j].options[items[j].answer]
            want = next(o for o in items[j].options if o != gold) if asked[j] in wrong_on(j) else gold
            asked[j] += 1
            shown = shown_options(prompt)
            assert sorted(o for _, o in shown) == sorted(items[j].options)
            letter = next(x for x, o in shown if o == want)
            texts.append(f"<think>\nreading the options\n</think>\n<Answer>{letter}</Answer>")
        return texts, [1] * len(texts), [False] * len(texts)

    return complete


def generated(tmp_path: Path) -> tuple[list[MCQItem], dict]:
    items = generate_items(20, seed=0)
    return items, dict(shuffles=ORDERS, **write_items(tmp_path / "mine.jsonl", items))


def tombench(tmp_path: Path) -> tuple[list[MCQItem], dict]:
    if not (DATA_ROOT / "tombench").is_dir():
        pytest.skip(f"{DATA_ROOT / 'tombench'} is absent (evaluation data lives beside the checkout)")
    return load("tombench", Sources()).items[:20], dict(benchmarks=("tombench",), limit=20)


def run(model_dir, tmp_path, monkeypatch, items, wrong_on, **kw) -> tuple[dict, list[dict]]:
    monkeypatch.setattr(eval_module, "complete", reader(items, wrong_on))
    out = tmp_path / "out"
    results = eval_main(EvalConfig(model=str(model_dir), output=str(out), **kw))
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return results, predictions


@pytest.mark.parametrize("source", [generated, tombench])
def test_three_right_orders_of_five_win_the_vote_whichever_were_wrong(source, model_dir, tmp_path, monkeypatch, world):
    items, kw = source(tmp_path)
    two_wrong = lambda j: {j % ORDERS, (j + 1) % ORDERS}  # noqa: E731: every order is wrong for some items
    results, _ = run(model_dir, tmp_path, monkeypatch, items, two_wrong, aggregate="majority", **kw)
    (summary,) = results["benchmarks"].values()
    assert (summary["items"], summary["orders"], summary["aggregate"]) == (20, ORDERS, "majority")
    assert summary["accuracy"] == 1.0 and summary["all_orders_correct"] == 0.0
    results, _ = run(model_dir, tmp_path, monkeypatch, items, two_wrong, aggregate="mean", **kw)
    assert next(iter(results["benchmarks"].values()))["accuracy"] == pytest.approx(0.6)
    three_wrong_on_odd = lambda j: {0, 1, 2} if j % 2 else set()  # noqa: E731: the vote goes wrong on half
    results, _ = run(model_dir, tmp_path, monkeypatch, items, three_wrong_on_odd, aggregate="majority", **kw)
    assert next(iter(results["benchmarks"].values()))["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("source", [generated, tombench])
def test_predictions_name_where_the_gold_was_shown(source, model_dir, tmp_path, monkeypatch, world):
    items, kw = source(tmp_path)
    first_wrong = lambda j: {0}  # noqa: E731
    results, predictions = run(model_dir, tmp_path, monkeypatch, items, first_wrong, **kw)
    assert len(predictions) == 20 * ORDERS and len({p["order"] for p in predictions}) > 1  # the orders differ
    for p in predictions:
        it = items[which(items, p["prompt"])]
        shown = dict(shown_options(p["prompt"]))
        assert shown[p["gold"]] == it.options[it.answer], p["id"]
        assert p["correct"] == (p["k"] != 0) == (shown[p["parsed"]] == it.options[it.answer]), p["id"]
    (summary,) = results["benchmarks"].values()
    assert summary["all_orders_correct"] == 0.0 and summary["parse_failure"] == 0.0


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

"""The reward's outside scorers against a real HTTP server on 127.0.0.1 (tests/reward_server.py):
the LLM judge, the reward-model scoring APIs, and the in-process reward model; failures never
become reward. Also Social-R1's formula on hand-computed cases, and a GRPO step that uses them."""

import asyncio
import email.utils
import math
import random
import time

import openai
import pytest
import torch
from transformers import AutoModelForSequenceClassification, Qwen3Config

from socialr1.errors import ConfigError
from socialr1.rewards import JudgeConfig, RewardConfig, RewardModelConfig, SIPReward, rm_input
from socialr1.grpo import STD_EPS, group_advantages
from socialr1.rewards.content import rm_template
from socialr1.rewards.judge import parse_score
from socialr1.rewards import remote
from socialr1.rewards.remote import backoff
from socialr1.sip import SIPFormat
from socialr1.synthetic import generate_items
from tests import rewards_reference as ref
from tests.reward_server import Reply, RewardServer, rate_limited

ITEM = generate_items(1, seed=11)[0]
WRONG = next(x for x in ITEM.letters if x != ITEM.answer_letter)


def trace(think: str, letter: str = ITEM.answer_letter) -> str:
    return f"<think>\n{think}\n</think>\n<Answer>{letter}</Answer>"


def filler(n: int, seed: int) -> str:
    """n characters of random lower-case words, no 16-gram twice (with overwhelming odds)."""
    rng = random.Random(seed)
    text = ""
    while len(text) < n:
        text += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) + " "
    return text[: n - 1] + "x"


def think_of(tags: str, n: int, seed: int = 0) -> str:
    """A think text of exactly n characters that starts with the server's tags."""
    return tags + " " + filler(n - len(tags) - 1, seed)


def score(reward: SIPReward, texts: list[str], step: int = 0) -> dict[str, torch.Tensor]:
    n = len(texts)
    return reward.score_texts(texts, [ITEM.answer_letter] * n, [ITEM.story] * n, step, [ITEM.question] * n, [ITEM.options] * n)


def judge_config(server: RewardServer, **settings) -> JudgeConfig:
    return JudgeConfig(**(dict(base_url=server.url + "/v1", model="judge", timeout=1.0, retries=2, concurrency=8) | settings))


def rm_config(server: RewardServer, api: str = "llamafactory", **settings) -> RewardModelConfig:
    path = {"llamafactory": "/v1/score/evaluation", "vllm-classify": "/classify", "vllm-pooling": "/pooling"}[api]
    return RewardModelConfig(**(dict(url=server.url + path, api=api, timeout=1.0, retries=2) | settings))


@pytest.fixture()
def server():
    with RewardServer() as s:
        yield s


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def lp(L: int) -> float:
    return sig((L - 400) / 50) * sig((3000 - L) / 50)


def test_social_r1_by_hand(tokenizer, server):
    """R = F^3 (EM + tau (w_s S + w_c max(0, C + 2)^1.2)) lp rp, R = 0 below F 0.1, else >= 0.01;
    S from the judge, C from the scoring API, both scripted."""
    config = RewardConfig(formula="social-r1", judge=judge_config(server), rm=rm_config(server))
    reward = SIPReward(tokenizer, config)
    exact = "[judge-score 1] [rm-score 0]"  # S = 1, C = 0; untagged texts get 0.5 from both
    once = filler(600, 3)
    texts = {
        "correct": trace(think_of(exact, 1000)),
        "wrong": trace(think_of(exact, 1000), WRONG),
        "L = 400": trace(think_of(exact, 400, 1)),
        "L = 3000": trace(think_of(exact, 3000, 2)),
        "said twice": trace(once + " " + once),  # L 1201: of 1186 16-grams, the 585 inside the copy repeat
        "loop": trace("abcd" * 250),  # L 1000: 985 16-grams, 4 distinct
        "no format": "Answer: " + trace(think_of(exact, 1000)),
        "newline after": trace(think_of(exact, 1000)) + "\n",  # `$` matches before a final newline
    }
    for step, w_s, w_c in ((0, 1.995, 1.01), (99, 1.5, 2.0), (199, 1.0, 3.0), (400, 1.0, 3.0)):  # trainer steps: p = (step + 1) / 200
        half = 1 + w_s * 0.5 + w_c * 2.5**1.2  # correct, S = C = 0.5
        want = {
            "correct": (1 + w_s * 1 + w_c * 2**1.2) * lp(1000),
            "wrong": 0.2 * (w_s * 1 + w_c * 2**1.2) * lp(1000),
            "L = 400": (1 + w_s + w_c * 2**1.2) * lp(400),
            "L = 3000": (1 + w_s + w_c * 2**1.2) * lp(3000),
            "said twice": half * lp(1201) * math.exp(-8 * (585 / 1186 - 0.1)),
            "loop": max(0.01, half * lp(1000) * math.exp(-8 * (981 / 985 - 0.1))),
            "no format": 0.0,
            "newline after": (1 + w_s * 1 + w_c * 2**1.2) * lp(1000),
        }
        s = score(reward, list(texts.values()), step)
        assert dict(zip(texts, s["total"].tolist())) == pytest.approx(want, rel=2e-6), step
        assert want["loop"] == 0.01 and lp(400) == pytest.approx(0.5, rel=1e-6) and lp(3000) == pytest.approx(0.5, rel=1e-6)
        row = list(texts).index("correct")
        got = {k: s[k][row].item() for k in ("format", "accuracy", "structure", "content", "tau", "adj", "w_s", "w_c")}
        assert got == pytest.approx(dict(format=1, accuracy=1, structure=1, content=0, tau=1, adj=2**1.2, w_s=w_s, w_c=w_c))
        assert s["tau"][1].item() == pytest.approx(0.2) and s["failed"].sum() == 0


def test_judge_retries_parses_strictly_and_never_rewards_failures(tokenizer, server):
    config = RewardConfig(formula="social-r1", judge=judge_config(server, retries=2))
    reward = SIPReward(tokenizer, config)
    think = {
        "plain": "[judge-score 0.8]",
        "clamped": "[judge-score 7]",
        "two 500s": "[judge-fail 2] [judge-score 0.6]",  # third attempt answers
        "always 500": "[judge-fail 9] [judge-score 0.9]",
        "garbage": "[judge-garbage] [judge-score 0.9]",
        "too slow": "[judge-delay 3] [judge-score 0.9]",  # timeout 1 s, every attempt
    }
    texts = [trace(think_of(t, 800, k)) for k, t in enumerate(think.values())]
    s = score(reward, texts, 50)
    assert s["structure"].tolist() == pytest.approx([0.8, 1.0, 0.6, 0, 0, 0])
    assert s["judge_failed"].tolist() == [0, 0, 0, 1, 1, 1] and s["failed"].tolist() == [0, 0, 0, 1, 1, 1]
    assert s["content_failed"].sum() == 0
    assert server.requests == 1 + 1 + 3 * 4  # retries: 2 after a failed attempt
    for row in (3, 4, 5):  # a failed judge counts 0, exactly as the reference with S missing
        want = ref.social_r1_scores(
            texts[row], ITEM.answer, 51, None, s["content"][row].item(), config.social_r1
        )
        assert s["total"][row].item() == pytest.approx(want["total"], rel=1e-5)
    assert reward.judge_replies[0].endswith("<Score>0.8</Score>") and reward.judge_replies[3] == ""
    for reply, want in (("Good. <Score>0.25</Score>", 0.25), ("<Score> 1 </Score>", 1.0), ("<Score>-3</Score>", 0.0)):
        assert parse_score(reply) == want
    for reply in ("Score: 0.7", "<Score>0.7</Score><Score>0.2</Score>", "<Score>high</Score>", "<Score>0.7", ""):
        with pytest.raises(ValueError):
            parse_score(reply)


def test_judge_concurrency_cap_and_cache(tokenizer):
    with RewardServer() as server:
        reward = SIPReward(tokenizer, RewardConfig(judge=judge_config(server, concurrency=3)))
        texts = [trace(think_of("[judge-delay 0.1]", 300, k)) for k in range(12)]
        s = score(reward, texts + texts[:4], 0)  # the last four repeat earlier ones: asked once
        assert server.requests == 12 and server.max_in_flight == 3 and (s["structure"] == 0.5).all()
        score(reward, texts[:4], 0)  # same step: from the cache
        assert server.requests == 12
        score(reward, texts[:4], 1)  # a new step asks again
        assert server.requests == 16


@pytest.mark.parametrize("api", ["llamafactory", "vllm-classify", "vllm-pooling"])
def test_scoring_apis_and_their_failures(tokenizer, server, api):
    config = RewardConfig(formula="social-r1", rm=rm_config(server, api, batch_size=2, concurrency=2))
    reward = SIPReward(tokenizer, config)
    think = ["[rm-score 1.5]", "[rm-score -3]", "[rm-fail 1] [rm-score 0.25]", "[rm-score 2]", "[rm-garbage]", "[rm-score 1]"]
    s = score(reward, [trace(think_of(t, 500, k)) for k, t in enumerate(think)], 0)
    # requests carry two texts each: the fifth text spoils the third request, the sixth with it
    assert s["content"].tolist() == pytest.approx([1.5, -3, 0.25, 2, 0, 0], abs=1e-6)
    assert s["adj"].tolist() == pytest.approx([3.5**1.2, 0, 2.25**1.2, 4**1.2, 0, 0], rel=1e-6)
    assert s["content_failed"].tolist() == [0, 0, 0, 0, 1, 1] and server.max_in_flight <= 2


@pytest.fixture(scope="module")
def classifier(tokenizer, tmp_path_factory):
    """A tiny random Qwen3 sequence classifier saved with the tests' tokenizer."""
    path = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_reward_model_batched_equals_unbatched(tokenizer, classifier, items):
    texts = [SIPFormat().render(it.gold_stages, it.answer_letter) for it in items[:6]]
    texts += [trace(ITEM.story[: 40 * k]) for k in range(1, 4)]
    answers, stories = [it.answer_letter for it in items[:6]] + [ITEM.answer_letter] * 3, [it.story for it in items[:6]] + [ITEM.story] * 3
    questions = [it.question for it in items[:6]] + [ITEM.question] * 3

    def run(budget: int, dtype: str = "float32", per_stage: bool = False) -> dict[str, torch.Tensor]:
        rm = RewardModelConfig(path=classifier, token_budget=budget, dtype=dtype, per_stage=per_stage)
        return SIPReward(tokenizer, RewardConfig(formula="social-r1", rm=rm)).score_texts(texts, answers, stories, 0, questions)

    one, many = run(1), run(100_000)
    assert torch.allclose(one["content"], many["content"], atol=1e-5) and one["content"].std() > 0
    bf16 = run(100_000, "bfloat16")
    assert torch.allclose(bf16["content"], many["content"], atol=0.05)
    staged = run(1, per_stage=True), run(100_000, per_stage=True)
    assert torch.allclose(staged[0]["content"], staged[1]["content"], atol=1e-5)
    lo, hi = RewardConfig().social_r1.lexical_content_range  # per-stage P(good) in [0, 1], mapped onto [lo, hi]
    assert ((staged[0]["content"][:6] > lo) & (staged[0]["content"][:6] < hi)).all()
    assert (staged[0]["content"][6:] == lo).all()  # no stage headers: no good stage
    assert (one["content_failed"] == 0).all()
    # the input is the documented template
    assert rm_input("S", "Q", "T").endswith("[Story]\nS\n[Question]\nQ\n[Reasoning]\nT")


def test_grpo_step_with_judge_and_reward_model(classifier, tmp_path, world):
    """One Trainer.step of the demo model with --reward.formula social-r1 --reward.structure judge
    --reward.content model; the rollouts are scripted (gold traces, one per group that the judge
    fails on), the rest is the trainer's own path: reward, advantages, update, metrics, samples."""
    from socialr1.config import parse
    from socialr1.rollout import Rollout, pad_left, stop_mask
    from socialr1.trainer import Trainer
    from tests.test_distributed import TINY

    with RewardServer() as server:
        cfg = parse([
            *TINY, "--steps", "1", "--rollout.prompts-per-step", "2", "--rollout.group-size", "3", "--sample-every", "1",
            "--output-dir", str(tmp_path / "run"), "--reward.formula", "social-r1", "--reward.structure", "judge",
            "--reward.content", "model", "--reward.judge.base-url", server.url + "/v1", "--reward.judge.model", "judge",
            "--reward.judge.timeout", "2", "--reward.judge.retries", "1", "--reward.rm.path", classifier,
            "--data.eval-synthetic", "4", "--rollout.max-new-tokens", "8", "--max-reward-failure-rate", "0.5",
        ])
        trainer = Trainer(cfg)
        trainer.setup()

        def rollout(step: int) -> Rollout:
            index = trainer.prompt_indices(step)
            texts = []
            for i in index:
                item = trainer.items[i]
                gold = cfg.sip.render(item.gold_stages, item.answer_letter)
                texts += [gold, gold.replace("</think>", "[judge-fail 9]\n</think>"), gold.replace("<think>", "<think>\n[judge-score 1]")]
            tok = trainer.tokenizer
            rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
            width = max(map(len, rows))
            comp = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
            ids, mask = pad_left([trainer.prompts[i] for i in index for _ in range(3)], tok.pad_token_id)
            return Rollout(ids, mask, comp, stop_mask(comp, [tok.eos_token_id]), torch.tensor(index).repeat_interleave(3))

        trainer.rollout = rollout
        trainer.log.start(0)
        metrics = trainer.step(0)
        asked = server.requests
        assert trainer.run_eval(1)["n"] == 4 and server.requests == asked  # eval reads format and accuracy only
        trainer.log.close()
    assert metrics["reward/judge_failures"] == 2 and metrics["reward/content_failures"] == 0
    assert metrics["reward/failed_frac"] == pytest.approx(1 / 3) and math.isfinite(metrics["loss"])
    for key in ("total", "format", "accuracy", "structure", "content", "length", "tau", "adj", "lp", "rp", "w_s", "w_c"):
        assert f"reward/{key}/mean" in metrics and f"reward/{key}/std" in metrics, key
    assert metrics["reward/format/mean"] == 1 and metrics["reward/structure/mean"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert trainer.reward.judge_replies[0].endswith("<Score>0.5</Score>") and trainer.reward.judge_replies[1] == ""


def test_presets_say_which_reward_they_run_and_fall_back(tokenizer, server):
    from socialr1.config import parse

    paper = parse(["socialr1-4b"]).reward
    assert paper.formula_used == "social-r1" and not paper.external
    assert "lexical scorers stand in" in paper.describe() and "formula social-r1" in paper.describe()
    s = score(SIPReward(tokenizer, paper), [trace(think_of("", 900))])  # scores offline, at step 0
    assert s["format"].item() == 1 and s["total"].item() > 0
    wired = parse(["socialr1-8b", "--reward.judge.base-url", server.url + "/v1", "--reward.judge.model", "j",
                   "--reward.rm.url", server.url + "/v1/score/evaluation"]).reward
    assert (wired.structure_scorer, wired.content_scorer, wired.external) == ("judge", "endpoint", True)
    assert "judge j at" in wired.describe() and "llamafactory scoring API" in wired.describe()
    assert parse(["demo"]).reward.formula_used == "sip"
    with pytest.raises(ConfigError, match="--reward.rm.path"):
        RewardConfig(content="model")
    with pytest.raises(ConfigError, match="--reward.judge.api-key-env NO_SUCH_VARIABLE_8"):
        RewardConfig(judge=JudgeConfig(api_key_env="NO_SUCH_VARIABLE_8"))
    judge_alone = parse(["socialr1-4b", "--reward.judge.base-url", server.url + "/v1", "--reward.judge.model", "j"]).reward
    rm_alone = parse(["socialr1-4b", "--reward.rm.url", server.url + "/v1/score/evaluation"]).reward
    assert "the offline lexical content score stands in for the paper's reward model" in judge_alone.describe()
    assert "the offline lexical structure score stands in for the paper's judge" in rm_alone.describe()
    assert "stands in" not in wired.describe()


def test_curriculum_counts_the_first_update_as_step_one(tokenizer):
    """The paper's code (verl) scores its first update as global step 1: p = 1/200 there, and the
    curriculum ends (p = 1) at global step 200, the trainer's 0-based step 199."""
    reward = SIPReward(tokenizer, RewardConfig(formula="social-r1"))
    for step, p in ((0, 1 / 200), (1, 2 / 200), (198, 199 / 200), (199, 1.0), (500, 1.0)):
        s = score(reward, [trace(think_of("", 600))], step)
        assert (s["w_s"].item(), s["w_c"].item()) == pytest.approx((2 - p, 1 + 2 * p), rel=1e-6), step


def test_a_judge_rate_limited_for_two_seconds_costs_no_failures(tokenizer):
    """HTTP 429 with Retry-After: 2 to every request of the first 2 s: each waits as asked and
    is answered on its next attempt."""
    with RewardServer(rate_limited(2.0)) as server:
        reward = SIPReward(tokenizer, RewardConfig(judge=judge_config(server, timeout=5.0, retries=2)))
        start = time.monotonic()
        s = score(reward, [trace(think_of("[judge-score 0.7]", 300, k)) for k in range(40)])
        elapsed = time.monotonic() - start
    assert s["judge_failed"].sum() == 0 and s["structure"].tolist() == pytest.approx([0.7] * 40)
    assert server.statuses == {429: 40, 200: 40} and 2.0 <= elapsed < 4.5


def status_error(status: int, headers: dict[str, str]) -> openai.APIStatusError:
    """The error our client raises for a reply of `status` with `headers` from the loopback server."""

    async def ask() -> None:
        async with remote.client(server.url + "/v1", None, 5.0) as client:
            await client.chat.completions.create(model="j", messages=[{"role": "user", "content": "x"}])

    with RewardServer(lambda kind, text, attempt: Reply("refused", status=status, headers=tuple(headers.items()))) as server:
        with pytest.raises(openai.APIStatusError) as caught:
            asyncio.run(ask())
    return caught.value


def test_backoff_honours_retry_after_within_the_timeout():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 3.0 <= backoff(status_error(429, {"Retry-After": "3"}), 0, 60) <= 3.35
    assert 0.25 <= backoff(status_error(503, {"retry-after-ms": "250"}), 0, 60) <= 0.33
    assert 26 <= backoff(status_error(429, {"Retry-After": when}), 0, 60) <= 33.1  # an HTTP date (whole seconds)
    assert backoff(status_error(429, {"Retry-After": "120"}), 0, 60) == 60  # never past the per-call timeout
    for k in range(4):  # no Retry-After: from a second after a 429 or 5xx, a tenth after anything else
        assert 0.5 * 2**k <= backoff(status_error(500, {}), k, 60) <= 2**k
        assert 0.05 * 2**k <= backoff(status_error(400, {}), k, 60) <= 0.1 * 2**k
        assert 0.05 * 2**k <= backoff(ValueError("malformed"), k, 60) <= 0.1 * 2**k
    assert backoff(status_error(429, {"Retry-After": "soon"}), 0, 60) <= 1.0  # unreadable: as if absent


@pytest.mark.parametrize("thinking, sent", [("off", {"enable_thinking": False}), ("on", {"enable_thinking": True}), ("unset", None)])
def test_judge_request_carries_templates_and_thinking(tokenizer, server, tmp_path, thinking, sent):
    prompt, system = tmp_path / "prompt.txt", tmp_path / "system.txt"
    prompt.write_text("Stages:\n{stages}\nStory: {story}\nQ: {question}\nOptions:\n{options}\n<R>{reasoning}</R> {{literal}}")
    system.write_text("Grade reasoning about: {question}")
    judge = judge_config(server, prompt=str(prompt), system=str(system), thinking=thinking)
    reward = SIPReward(tokenizer, RewardConfig(judge=judge))
    think = think_of("[judge-score 0.25]", 300)
    s = score(reward, [trace(think)])
    assert s["structure"].item() == 0.25 and len(server.bodies) == 1
    body = server.bodies[0]
    fmt = SIPFormat()
    options = "\n".join(f"{x}. {o}" for x, o in zip(ITEM.letters, ITEM.options))
    stages = "\n".join(f"{k + 1}. {n}: {h}" for k, (n, h) in enumerate(zip(fmt.stages, fmt.stage_hints)))
    assert body["messages"] == [
        {"role": "system", "content": f"Grade reasoning about: {ITEM.question}"},
        {"role": "user", "content": f"Stages:\n{stages}\nStory: {ITEM.story}\nQ: {ITEM.question}\nOptions:\n{options}\n<R>{think}</R> {{literal}}"},
    ]
    assert body.get("chat_template_kwargs") == sent and ("chat_template_kwargs" in body) == (sent is not None)


def test_empty_system_file_sends_no_system_message(tokenizer, server, tmp_path):
    empty = tmp_path / "system.txt"
    empty.write_text("")
    score(SIPReward(tokenizer, RewardConfig(judge=judge_config(server, system=str(empty)))), [trace(think_of("", 300))])
    assert [m["role"] for m in server.bodies[0]["messages"]] == ["user"]


REPLIES = {
    "[reply 1]": "Fine. <Score>0.3</Score> On reflection, <Score>0.7</Score>",
    "[reply 2]": " 0.6\n",
    "[reply 3]": "Follows the stages. <Score>0.9</Score>",
    "[reply 4]": "I cannot grade this.",
    "[reply 5]": "<Score>nan</Score>",
    "[reply 6]": "<Score>3</Score> and then <Score>-2",
}


@pytest.mark.parametrize("rule, want", [
    ("strict", [None, None, 0.9, None, None, None]),
    ("last", [0.7, 0.6, 0.9, None, None, 0.0]),
])
def test_judge_parse_rules(tokenizer, rule, want):
    def script(kind: str, text: str, attempt: int) -> Reply:
        return Reply(next(r for tag, r in REPLIES.items() if tag in text))

    with RewardServer(script) as server:
        reward = SIPReward(tokenizer, RewardConfig(judge=judge_config(server, parse=rule, retries=0)))
        s = score(reward, [trace(think_of(tag, 300)) for tag in REPLIES])
    assert s["judge_failed"].tolist() == [float(w is None) for w in want]
    assert s["structure"].tolist() == pytest.approx([0.0 if w is None else w for w in want])


def test_reward_model_template_reaches_the_scoring_api(tokenizer, server, tmp_path):
    path = tmp_path / "rm.txt"
    path.write_text("{question}[Reasoning] {reasoning}")
    config = RewardConfig(formula="social-r1", rm=rm_config(server, template=str(path)))
    think = think_of("[rm-score 1.5]", 500)
    s = score(SIPReward(tokenizer, config), [trace(think)])
    assert s["content"].item() == pytest.approx(1.5)
    assert server.bodies[0]["messages"] == [f"{ITEM.question}[Reasoning] {think}"]
    assert rm_input("S", "Q", "T", rm_template(str(path))) == "Q[Reasoning] T"


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_a_failed_sample_leaves_its_group_as_if_it_were_not_there(tokenizer, server, scale):
    """Two groups of four scored by the judge; one sample of the first fails after its retries.
    Its advantage is 0 and its group's others equal those of the three-sample group; under
    scale batch, the batch std is over the valid samples."""
    tags = ["[judge-score 0.9]", "[judge-fail 9]", "[judge-score 0.2]", "[judge-score 0.5]",
            "[judge-score 0.1]", "[judge-score 0.4]", "[judge-score 0.8]", "[judge-score 0.6]"]
    reward = SIPReward(tokenizer, RewardConfig(formula="social-r1", judge=judge_config(server, retries=0)))
    s = score(reward, [trace(think_of(t, 800, k)) for k, t in enumerate(tags)], 50)
    total, valid = s["total"].double(), s["failed"] == 0
    assert valid.tolist() == [True, False, True, True, True, True, True, True]
    adv = group_advantages(total, 4, scale, valid)
    assert adv[1] == 0
    alone = group_advantages(total[[0, 2, 3]], 3, "group" if scale == "group" else "none")
    if scale == "batch":
        alone = alone / (total[valid].std() + STD_EPS)
    torch.testing.assert_close(adv[[0, 2, 3]], alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(adv[4:], group_advantages(total, 4, scale)[4:] if scale != "batch" else
                               (total[4:] - total[4:].mean()) / (total[valid].std() + STD_EPS), rtol=1e-12, atol=1e-12)
    assert torch.equal(group_advantages(total, 4, scale, torch.ones(8, dtype=torch.bool)), group_advantages(total, 4, scale))


def test_group_advantages_of_lone_and_empty_groups():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    adv = group_advantages(rewards, 3, "group", torch.tensor([True, False, False, False, False, False]))
    assert adv.tolist() == [0.0] * 6  # one valid sample: nothing to compare with; none: nothing to learn

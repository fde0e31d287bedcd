"""Reward settings that cannot work stop train.py in one line (`error: ...`, exit status 1) before
any model loads: missing judge or reward-model flags, an unset API-key variable, and judge or
reward-model template files with unknown fields."""

from pathlib import Path

import pytest

from socialr1.config import ConfigError, parse
from socialr1.rewards import RewardConfig
from tests.test_resilience import run_main

DEMO = ("demo", "--data.synthetic", "8", "--data.eval-synthetic", "0")


def template(tmp_path: Path, text: str, name: str = "t.txt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("flags, message", [
    (("--reward.judge.base-url", "http://127.0.0.1:9/v1"), "--reward.judge.model is needed"),
    (("--reward.judge.api-key-env", "SOCIALR1_NO_SUCH_KEY"), "--reward.judge.api-key-env SOCIALR1_NO_SUCH_KEY: no such environment variable"),
    (("--reward.rm.api-key-env", "SOCIALR1_NO_SUCH_KEY"), "--reward.rm.api-key-env SOCIALR1_NO_SUCH_KEY"),
    (("--reward.content", "model"), "--reward.rm.path is needed"),
    (("--reward.copy-tolerance", "1"), "--reward.rep-tolerance and --reward.copy-tolerance must lie in [0, 1)"),
])
def test_bad_reward_settings_are_one_line(flags, message):
    assert run_main(*DEMO, *flags).startswith(f"error: {message}")


@pytest.mark.parametrize("flag, text, message", [
    ("--reward.judge.prompt", "Judge {reasoning} of {story} for {character}.", "unknown field {character}"),
    ("--reward.judge.prompt", "Judge {story}.", "never uses {reasoning}"),
    ("--reward.judge.prompt", "A brace { alone {reasoning}", "not a str.format template"),
    ("--reward.judge.system", "You judge {0}.", "unknown field {0}"),
    ("--reward.rm.template", "{story} {question} {options} {reasoning}", "unknown field {options}"),
])
def test_bad_templates_stop_at_start_up(tmp_path, flag, text, message):
    path = template(tmp_path, text)
    line = run_main(*DEMO, flag, path)
    assert line.startswith(f"error: {flag} {path}: ") and message in line


def test_missing_template_file(tmp_path):
    missing = str(tmp_path / "none.txt")
    assert run_main(*DEMO, "--reward.judge.prompt", missing).startswith(f"error: --reward.judge.prompt {missing}: cannot read it")


def test_good_templates_parse(tmp_path):
    prompt = template(tmp_path, "{stages}\n{story}\n{question}\n{options}\n{reasoning}\nLiteral {{braces}}.", "p.txt")
    system = template(tmp_path, "You judge answers to: {question}", "s.txt")
    rm = template(tmp_path, "{question}[Reasoning] {reasoning}", "r.txt")
    cfg = parse([*DEMO, "--reward.judge.prompt", prompt, "--reward.judge.system", system, "--reward.rm.template", rm,
                 "--reward.judge.thinking", "off", "--reward.judge.parse", "last"]).reward
    assert (cfg.judge.prompt, cfg.judge.system, cfg.rm.template, cfg.judge.thinking, cfg.judge.parse) == (prompt, system, rm, "off", "last")
    assert RewardConfig().judge.thinking == "unset" and RewardConfig().judge.parse == "strict"
    with pytest.raises(ConfigError):
        RewardConfig(rep_tolerance=1.5)


def test_reward_model_training_reads_the_same_template(tmp_path):
    from socialr1.reward_model import inputs
    from socialr1.sip import SIPFormat

    path = template(tmp_path, "{question}[Reasoning] {reasoning}")
    assert inputs.reward_inputs("S", "Q", " T ", "think", SIPFormat(), path) == ["Q[Reasoning] T"]
    assert run_main("reward-model", "rm-demo", "--input.template", template(tmp_path, "{reasoning} {options}", "bad.txt")).startswith(
        f"error: --input.template {tmp_path / 'bad.txt'}: unknown field {{options}}")

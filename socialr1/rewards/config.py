"""Reward settings: which formula, which structure and content scorers, and every constant."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from socialr1.errors import ConfigError
from socialr1.rewards.templates import JUDGE_PROMPT, JUDGE_SYSTEM, RM_INPUT, read_template


@dataclass
class SocialR1Config:
    """Constants of Social-R1's published reward (defaults: the published values):
    R = F**format_power * (EM + tau * (w_s * S + w_c * adj)) * lp * rp, 0 when F < format_gate,
    else at least floor. adj = max(0, C + content_shift) ** content_power."""

    tau_wrong: float = 0.2
    """tau for a wrong answer (1 for a correct one): process rewards count fully only when correct."""
    format_power: float = 3.0
    """Exponent of the format score F."""
    format_gate: float = 0.1
    """Below this F the total is 0."""
    floor: float = 0.01
    """Least total of a completion that passes the format gate."""
    content_shift: float = 2.0
    """adj = max(0, C + content_shift) ** content_power, C: the reward model's raw score."""
    content_power: float = 1.2
    """See content_shift."""
    len_low: float = 400.0
    """Think-text length (characters) where the rising sigmoid of lp is 0.5."""
    len_high: float = 3000.0
    """Think-text length (characters) where the falling sigmoid of lp is 0.5."""
    len_softness: float = 50.0
    """lp = sigmoid((L - len_low) / len_softness) * sigmoid((len_high - L) / len_softness)."""
    rep_n: int = 16
    """Character n-gram size of the repetition share rho of the think text."""
    rep_threshold: float = 0.1
    """rp = exp(-rep_slope * (rho - rep_threshold)) above this share of repeated n-grams, else 1."""
    rep_slope: float = 8.0
    """See rep_threshold."""
    curriculum_steps: float = 200.0
    """p = min(1, global_step / curriculum_steps) moves w_s and w_c linearly from start to end;
    global_step counts updates from 1, as the paper's code (verl) does."""
    w_structure_start: float = 2.0
    """w_s at global step 0 (p = 0)."""
    w_structure_end: float = 1.0
    """w_s from step curriculum_steps on."""
    w_content_start: float = 1.0
    """w_c at global step 0 (p = 0)."""
    w_content_end: float = 3.0
    """w_c from step curriculum_steps on."""
    lexical_content_range: tuple[float, float] = (-2.0, 2.0)
    """Where a [0, 1] content score (lexical, or the reward model's per-stage mode) lands on the raw
    reward-model scale: C = lo + (hi - lo) * c, so c = 0 gives adj = 0 and c = 1 gives (hi + 2) ** 1.2."""


@dataclass
class ServiceConfig:
    """How a scoring service is called."""

    api_key_env: str | None = None
    """NAME of the environment variable holding the API key (never the key itself); none: no key."""
    concurrency: int = 64
    """Requests in flight at once, per rank."""
    timeout: float = 60.0
    """Seconds one request may take."""
    retries: int = 3
    """Further attempts after a failed one (HTTP error, timeout, malformed reply or score)."""


@dataclass
class JudgeConfig(ServiceConfig):
    """An OpenAI-compatible chat-completions endpoint (vLLM, SGLang, TGI, Ollama, OpenAI) that
    scores the think text's structure; see socialr1/rewards/judge.py for the rubric."""

    base_url: str | None = None
    """Endpoint root, e.g. http://127.0.0.1:8000/v1."""
    model: str | None = None
    """Model name the endpoint serves."""
    temperature: float = 0.3
    """Sampling temperature of the judge."""
    max_tokens: int = 512
    """Reply length limit of the judge."""
    prompt: str | None = None
    """FILE holding the judge's prompt: plain text with Python str.format fields {story},
    {question}, {options}, {reasoning}, {stages} (literal braces doubled); none: our rubric
    (socialr1/rewards/judge.py)."""
    system: str | None = None
    """FILE holding the judge's system message, with the same fields (an empty file: no system
    message, as the paper's client sends); none: our one-line one."""
    thinking: Literal["on", "off", "unset"] = "unset"
    """Whether a thinking judge (Qwen3 under vLLM or SGLang) thinks before it answers, sent as
    chat_template_kwargs {"enable_thinking": ...} in the request body; unset: send nothing (the
    server's default; hosted APIs may refuse the field)."""
    parse: Literal["strict", "last"] = "strict"
    """strict: the reply must hold exactly one <Score>x</Score>; last: the paper's code, the last
    <Score> of the reply, or the whole reply as a bare number. Both clamp to [0, 1]."""


@dataclass
class RewardModelConfig(ServiceConfig):
    """The content scorer: a Hugging Face sequence-classification reward model in-process
    (--reward.content model) or behind an HTTP scoring API (--reward.content endpoint). Its input
    is `socialr1.rewards.content.rm_input(story, question, think_text, template)`."""

    path: str | None = None
    """Local directory or hub name of the reward model (--reward.content model)."""
    per_stage: bool = False
    """Score each SIP stage segment apart and average P(good) over the four stages (a [0, 1]
    score), instead of the raw score of the whole think text (the paper's reward model)."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """Compute dtype of the in-process reward model (on the training device)."""
    token_budget: int = 16384
    """Padded tokens per forward pass of the in-process reward model (inputs sorted by length)."""
    max_length: int = 4096
    """Token limit of one reward-model input (longer ones are cut at the end)."""
    url: str | None = None
    """Full URL of the scoring API (--reward.content endpoint), e.g.
    http://127.0.0.1:8000/v1/score/evaluation (LLaMA-Factory) or http://127.0.0.1:8000/classify (vLLM)."""
    api: Literal["llamafactory", "vllm-classify", "vllm-pooling"] = "llamafactory"
    """Request and reply format of the scoring API."""
    model: str = "reward-model"
    """Model name sent to the scoring API."""
    batch_size: int = 16
    """Texts per request to the scoring API."""
    template: str | None = None
    """FILE holding the reward model's input: plain text with str.format fields {story},
    {question}, {reasoning}; none: the built-in one (socialr1/rewards/content.py). Train the
    reward model with the same file (train.py reward-model --input.template FILE)."""


@dataclass
class RewardConfig:
    """The reward. formula sip: total = format * (w_accuracy * accuracy + tau(step) *
    (w_structure * structure + w_content * content)) * length (multiplicative mode), every
    component in [0, 1]. formula social-r1: Social-R1's published reward (see SocialR1Config)."""

    formula: Literal["sip", "social-r1"] = "sip"
    """sip: our reward (fields below); social-r1: the paper's formula (--reward.social-r1.*)."""
    structure: Literal["auto", "lexical", "judge"] = "auto"
    """Structure scorer: lexical (offline), judge (an LLM endpoint, --reward.judge.*); auto: judge
    when --reward.judge.base-url is set, else lexical."""
    content: Literal["auto", "lexical", "model", "endpoint"] = "auto"
    """Content scorer: lexical (offline), model (--reward.rm.path in-process), endpoint
    (--reward.rm.url); auto: model, endpoint or lexical, whichever is configured."""
    preset: Literal["none", "social-r1"] = "none"
    """social-r1: the paper's reward (formula social-r1; judge and reward model where configured,
    lexical scorers otherwise, said at start-up). It overrides --reward.formula."""
    social_r1: SocialR1Config = field(default_factory=SocialR1Config)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    mode: Literal["multiplicative", "additive"] = "multiplicative"
    """sip formula. multiplicative: as above. additive: w_format * format + w_accuracy * accuracy +
    tau * (w_structure * structure + w_content * content) + w_length * length."""
    w_accuracy: float = 1.0
    """Weight of answer correctness."""
    w_structure: float = 0.5
    """Weight of the SIP structure score (stages present, in order, each once, non-trivial)."""
    w_content: float = 0.5
    """Weight of the SIP content score (each stage grounded in the item)."""
    w_format: float = 0.5
    """Weight of the format score (additive mode only; it gates the total in multiplicative mode)."""
    w_length: float = 0.25
    """Weight of the length score (additive mode only; it scales the total in multiplicative mode)."""
    curriculum_start: float = 0.3
    """Fraction of training steps with tau = 0 (outcome reward only) before the process reward ramps in."""
    curriculum_end: float = 0.7
    """Fraction of training steps at which tau reaches 1 (linear ramp from curriculum_start)."""
    len_min: float = 32.0
    """Length window: completion length (tokens) at which the rising sigmoid is 0.5."""
    len_max: float = 768.0
    """Length window: completion length (tokens) at which the falling sigmoid is 0.5."""
    len_sharpness: float = 10.0
    """Length window slope k: sigmoid(k (L - len_min) / W) * (1 - sigmoid(k (L - len_max) / W)),
    W = len_max - len_min."""
    rep_ngram: int = 4
    """Word n-gram size of the repetition penalty (multiplies the length score)."""
    rep_tolerance: float = 0.2
    """Share of repeated word n-grams tolerated before the repetition penalty starts (0 at 100%)."""
    min_stage_words: int = 3
    """Content words (2+ letters, not stopwords) a stage needs to count as non-trivial."""
    stage_repeat_penalty: float = 0.25
    """Structure loses this fraction per extra occurrence of a stage header."""
    grounding_weight: float = 0.5
    """Per stage content score: this weight on grounding precision, the rest on the stage-specific term."""
    mental_target: int = 2
    """Mental-state words Cue Interpretation needs for full credit on its stage term."""
    max_entities: int = 12
    """Cue Encoding should cover this many of the story's most salient words (characters, objects)."""
    copy_ngram: int = 4
    """Word n-gram size for detecting verbatim copies of the story inside a stage."""
    copy_tolerance: float = 0.5
    """Share of a stage's n-grams copied verbatim from the story tolerated before its content
    score drops (0 at 100%)."""
    cpu_threads: int = 1
    """Torch threads while scoring on CPU (0: leave torch's setting). The reward runs many small,
    latency-bound ops: extra threads gain little and lose much when the cores are shared."""

    def __post_init__(self) -> None:
        """ConfigError, not ValueError: train.py prints it as one line (tyro would box a ValueError)."""
        if not (0 <= self.rep_tolerance < 1 and 0 <= self.copy_tolerance < 1):
            raise ConfigError("--reward.rep-tolerance and --reward.copy-tolerance must lie in [0, 1)")
        if self.len_max <= self.len_min or min(self.rep_ngram, self.copy_ngram, self.mental_target) < 1:
            raise ConfigError("need --reward.len-max > --reward.len-min and --reward.rep-ngram, copy-ngram, mental-target >= 1")
        needs = {
            "--reward.judge.base-url": self.structure_scorer == "judge" and not self.judge.base_url,
            "--reward.judge.model": self.structure_scorer == "judge" and not self.judge.model,
            "--reward.rm.path": self.content_scorer == "model" and not self.rm.path,
            "--reward.rm.url": self.content_scorer == "endpoint" and not self.rm.url,
        }
        for flag, missing in needs.items():
            if missing:
                raise ConfigError(f"{flag} is needed by --reward.structure {self.structure} --reward.content {self.content}")
        for flag, name in (("--reward.judge.api-key-env", self.judge.api_key_env), ("--reward.rm.api-key-env", self.rm.api_key_env)):
            if name and name not in os.environ:
                raise ConfigError(f"{flag} {name}: no such environment variable is set")
        if self.social_r1.rep_n < 1 or self.social_r1.curriculum_steps <= 0 or self.social_r1.len_softness <= 0:
            raise ConfigError("--reward.social-r1.rep-n, curriculum-steps and len-softness must be positive")
        for path, spec in ((self.judge.prompt, JUDGE_PROMPT), (self.judge.system, JUDGE_SYSTEM), (self.rm.template, RM_INPUT)):
            if path is not None:
                read_template(path, *spec)

    # Resolved choices, as properties: tyro takes a preset's field values as the defaults of its
    # flags, so "auto" must stay in the fields for --reward.judge.base-url alone to switch the judge on.
    @property
    def formula_used(self) -> Literal["sip", "social-r1"]:
        return "social-r1" if self.preset == "social-r1" else self.formula

    @property
    def structure_scorer(self) -> Literal["lexical", "judge"]:
        if self.structure == "auto":
            return "judge" if self.judge.base_url else "lexical"
        return self.structure

    @property
    def content_scorer(self) -> Literal["lexical", "model", "endpoint"]:
        if self.content == "auto":
            return "model" if self.rm.path else "endpoint" if self.rm.url else "lexical"
        return self.content

    @property
    def external(self) -> bool:
        """Whether a scorer outside this process or a learned model takes part (they can fail)."""
        return self.structure_scorer == "judge" or self.content_scorer != "lexical"

    def describe(self) -> str:
        """One line for the start-up log: which reward this run computes."""
        structure = f"judge {self.judge.model} at {self.judge.base_url}" if self.structure_scorer == "judge" else "lexical"
        content = {
            "model": f"reward model {self.rm.path}" + (" (per stage)" if self.rm.per_stage else ""),
            "endpoint": f"{self.rm.api} scoring API at {self.rm.url}",
        }.get(self.content_scorer, "lexical")
        line = f"reward: formula {self.formula_used}, structure {structure}, content {content}"
        if self.formula_used == "social-r1":
            judge, model = self.structure_scorer == "judge", self.content_scorer != "lexical"
            if not (judge or model):
                line += " (no --reward.judge.base-url nor --reward.rm.path/url: the offline lexical scorers stand in)"
            elif not judge:
                line += " (no --reward.judge.base-url: the offline lexical structure score stands in for the paper's judge)"
            elif not model:
                line += " (no --reward.rm.path/url: the offline lexical content score stands in for the paper's reward model)"
        return line

"""The SIP output format: one definition shared by the prompt (what we ask for) and the reward
(what we check). Change a marker here and both sides follow."""

from dataclasses import dataclass
from typing import Literal, Sequence


@dataclass(frozen=True)
class SIPFormat:
    """Markers of a Social-R1 completion: reasoning through the four SIP stages inside the think
    tags, then one option letter inside the answer tags."""

    think_open: str = "<think>"
    """Opens the reasoning block."""
    think_close: str = "</think>"
    """Closes the reasoning block."""
    answer_open: str = "<Answer>"
    """Opens the answer (one option letter)."""
    answer_close: str = "</Answer>"
    """Closes the answer."""
    stages: tuple[str, ...] = (
        "Cue Encoding",
        "Cue Interpretation",
        "Goal Clarification",
        "Response Generation",
    )
    """SIP stage names, in the order the reasoning must follow."""
    stage_hints: tuple[str, ...] = (
        "what is observed: who is where, what happens, who sees or hears what.",
        "what those cues mean for each character's beliefs, feelings and intentions.",
        "what the question asks, from whose perspective, and what the answer must achieve.",
        "weigh each option against the above and pick the best one.",
    )
    """One line per stage telling the model what that stage should contain (shown in the prompt)."""
    stage_suffix: str = ":"
    """Written right after a stage name to open that stage."""
    instruction: Literal["full", "brief"] = "full"
    """The training prompt's instruction. full: the tags, then one line per stage with its hint.
    brief: one sentence naming the stages and tags (a third of the tokens; for tiny models)."""

    def stage_header(self, i: int) -> str:
        return f"{self.stages[i]}{self.stage_suffix}"

    def render(self, stage_texts: Sequence[str], letter: str) -> str:
        """A well-formed completion from one text per stage and the chosen letter."""
        if len(stage_texts) != len(self.stages):
            raise ValueError(f"expected {len(self.stages)} stage texts, got {len(stage_texts)}")
        body = self.think_body(list(enumerate(stage_texts)))
        return f"{self.think_open}\n{body}\n{self.think_close}\n{self.answer_open}{letter}{self.answer_close}"

    def think_body(self, stages: Sequence[tuple[int, str]]) -> str:
        """The reasoning inside the think tags: one line per (stage index, text), in the given order."""
        return "\n".join(f"{self.stage_header(i)} {t.strip()}" for i, t in stages)

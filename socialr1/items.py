"""The one record every stage passes along: a multiple-choice social-reasoning item."""

from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCQItem:
    story: str
    question: str
    options: tuple[str, ...]  # 2..26 option texts, labelled A, B, C, ...
    answer: int  # index into options of the gold option
    ability: str = ""  # benchmark category (ToMBench's ABILITY), used for per-ability eval
    source: str = ""  # "file:row" for error messages and tracing
    gold_stages: tuple[str, ...] | None = None  # one text per SIP stage (generated items only)

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

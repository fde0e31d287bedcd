"""SIP preference pairs: loaded from files or the Hub with `datasets`, or generated offline from
the synthetic items' gold SIP traces.

A pair is an item (story, question, options optional) with a chosen and a rejected reasoning
text (what goes inside the think tags). Generated pairs take the gold trace as chosen and a
seeded corruption of it, of one recorded kind, as rejected.

    python -m socialr1.reward_model.pairs runs/pairs --train 4000 --eval 600   # train.jsonl, eval.jsonl
"""

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from socialr1.data import DataError, _error, _list_options, _required, load_tables
from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat
from socialr1.synthetic import CONTAINERS, NAMES, generate_items

EVAL_SEED_OFFSET = 10_000  # held-out pairs come from items of a seed training never uses

KINDS = (
    "wrong_character",  # a mental state attributed to a character the question is not about
    "true_location",  # where the object really is, given as where it is believed to be
    "skipped_stage",
    "stage_order",
    "option_in_cue_encoding",  # an option named while encoding cues: deciding before inferring
    "backwards",  # the interpretation justified from the answer instead of from the cues
    "story_copy",  # the story pasted in as a stage
    "filler",  # a stage of generic text that does not mention the story
)
Kind = Literal[KINDS]  # one of KINDS, as a type tyro checks flags against

FILLER = (
    "It is important to think carefully about everyone involved.",
    "People often have different views, and each of them matters.",
    "This situation needs careful thought before anything is decided.",
    "There are many things to consider here, so I will be thorough.",
    "Understanding others is a key part of any social situation.",
    "Everyone acts for reasons, even when those reasons are not clear.",
)


@dataclass(frozen=True)
class Pair:
    story: str
    question: str
    options: tuple[str, ...]  # may be empty
    chosen: str  # the preferred reasoning text
    rejected: str
    kind: str = ""  # the corruption of a generated pair, or the data's own label ('' if none)
    source: str = ""  # "file:row" for error messages


@dataclass(frozen=True)
class PairFields:
    """Which fields of a row hold each part of a preference pair."""

    story: str = "story"
    """Field with the story (may be empty)."""
    question: str = "question"
    """Field with the question (must be non-empty)."""
    options: str = "options"
    """Field with a list of option texts; optional: rows without it (or files without the field)
    have no options."""
    chosen: str = "chosen"
    """Field with the preferred reasoning text."""
    rejected: str = "rejected"
    """Field with the dispreferred reasoning text."""
    kind: str = "kind"
    """Optional field with a label per pair (eval accuracy is also reported per label)."""


def load_pairs(source: str, fields: PairFields = PairFields(), split: str = "train") -> list[Pair]:
    """Pairs from a Hub dataset name, a local JSONL/JSON/CSV/Parquet file, or a folder of them."""
    pairs = []
    for label, table in load_tables(source, split):
        for field in (fields.question, fields.chosen, fields.rejected):
            if field not in table.column_names:
                raise DataError(f"{label}: no field {field!r}; fields are {', '.join(table.column_names)}")
        for row, record in enumerate(table, start=1):
            pairs.append(_pair(record, fields, f"{label}:{row}"))
    return pairs


def _pair(record: dict[str, Any], fields: PairFields, where: str) -> Pair:
    story = _required(record, fields.story, where, allow_empty=True) if fields.story in record else ""
    options = record.get(fields.options)
    chosen = _required(record, fields.chosen, where, allow_empty=False)
    rejected = _required(record, fields.rejected, where, allow_empty=False)
    if chosen == rejected:
        raise _error(where, fields.rejected, "the same text as the chosen one")
    return Pair(
        story=story,
        question=_required(record, fields.question, where, allow_empty=False),
        options=() if options is None else _list_options(record, fields.options, where),
        chosen=chosen,
        rejected=rejected,
        kind=str(record.get(fields.kind) or ""),
        source=where,
    )


def generate_pairs(
    n: int,
    seed: int,
    fmt: SIPFormat = SIPFormat(),
    exclude: set[str] = frozenset(),
    containers: int = len(CONTAINERS),
    kinds: tuple[Kind, ...] = KINDS,
) -> list[Pair]:
    """n pairs from generated items (stories in `exclude` skipped; places drawn from the first
    `containers`), corruption kinds taken in turn from `kinds` (a kind listed twice comes twice as
    often); an item a kind does not apply to takes the next kind that does (of KINDS, when none
    of `kinds` does)."""
    rng = random.Random(seed)
    items = [it for it in generate_items(n + min(n, len(exclude)), seed, containers=containers) if it.story not in exclude][:n]
    pairs = []
    for i, item in enumerate(items):
        kind = next(k for k in kinds[i % len(kinds) :] + kinds + KINDS if _applies(k, item))
        stages = list(enumerate(item.gold_stages))
        pairs.append(
            Pair(
                story=item.story,
                question=item.question,
                options=item.options,
                chosen=fmt.think_body(stages),
                rejected=fmt.think_body(corrupt(kind, item, stages, rng)),
                kind=kind,
                source=item.source,
            )
        )
    return pairs


def _names(text: str) -> list[str]:
    return sorted((n for n in NAMES if re.search(rf"\b{n}\b", text)), key=text.index)


def _final_place(item: MCQItem) -> str | None:
    moves = re.findall(r"moves the \w+ to the (\w+)\.", item.story)
    return moves[-1] if moves else None


def _applies(kind: str, item: MCQItem) -> bool:
    asked = _names(item.question)
    if kind == "wrong_character":
        return bool(asked) and len(_names(item.story)) > len(asked)
    if kind == "true_location":
        return bool(asked) and _final_place(item) not in (None, item.options[item.answer])
    return True


def corrupt(kind: str, item: MCQItem, stages: list[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """The gold (stage index, text) list with one corruption of `kind` (see KINDS)."""
    out = list(stages)
    answer, letter = item.options[item.answer], item.answer_letter
    if kind == "wrong_character":
        asked = _names(item.question)
        other = rng.choice([n for n in _names(item.story) if n not in asked])
        out[1] = (1, re.sub(rf"\b{rng.choice(asked)}\b", other, out[1][1]))
    elif kind == "true_location":
        out[1] = (1, re.sub(rf"\bthe {answer}\b", f"the {_final_place(item)}", out[1][1]))
    elif kind == "skipped_stage":
        del out[rng.randrange(len(out))]
    elif kind == "stage_order":
        a, b = rng.sample(range(len(out)), 2)
        out[a], out[b] = out[b], out[a]
    elif kind == "option_in_cue_encoding":
        pick = rng.randrange(len(item.options))
        named = f"Option {LETTERS[pick]}, the {item.options[pick]}, looks right."
        out[0] = (0, f"{named} {out[0][1]}")
    elif kind == "backwards":
        out[1] = (1, f"Option {letter} is the answer, so this must hold: {out[1][1]}")
        out[3] = (3, f"Option {letter}, because the answer is the {answer}.")
    elif kind == "story_copy":
        k = rng.randrange(len(out))
        out[k] = (k, item.story)
    elif kind == "filler":
        k = rng.randrange(len(out))
        out[k] = (k, " ".join(rng.sample(FILLER, 2)))
    else:
        raise ValueError(f"unknown corruption kind {kind!r}; kinds: {', '.join(KINDS)}")
    return out


def synthetic_splits(
    n_train: int, n_eval: int, seed: int, fmt: SIPFormat, containers: int = len(CONTAINERS), kinds: tuple[Kind, ...] = KINDS
) -> tuple[list[Pair], list[Pair]]:
    """Training pairs (corruptions taken in turn from `kinds`), and held-out pairs from items of
    another seed whose stories no training pair has (every kind in turn, so held-out accuracy means
    the same whatever the training mix)."""
    train = generate_pairs(n_train, seed, fmt, containers=containers, kinds=kinds)
    held_out = generate_pairs(n_eval, seed + EVAL_SEED_OFFSET, fmt, {p.story for p in train}, containers)
    return train, held_out


def write_jsonl(pairs: list[Pair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p in pairs:
            row = asdict(p)
            row["options"] = list(p.options)
            f.write(json.dumps(row) + "\n")


def main(out: tyro.conf.Positional[Path], train: int = 4000, eval: int = 600, seed: int = 0) -> None:
    """Write generated SIP preference pairs to OUT/train.jsonl and OUT/eval.jsonl.

    Args:
        out: Folder to write to.
        train: Training pairs.
        eval: Held-out pairs, from items whose stories no training pair has.
        seed: Seed of the items and of the corruptions.
    """
    train_pairs, eval_pairs = synthetic_splits(train, eval, seed, SIPFormat())
    write_jsonl(train_pairs, out / "train.jsonl")
    write_jsonl(eval_pairs, out / "eval.jsonl")
    print(f"wrote {len(train_pairs)} pairs to {out / 'train.jsonl'} and {len(eval_pairs)} to {out / 'eval.jsonl'}")


if __name__ == "__main__":
    tyro.cli(main)

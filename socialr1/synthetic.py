"""Original, templated false-belief items (first to fourth order) with true-belief controls and
reality questions, short enough for a tiny model to learn on CPU, each with gold SIP stage texts.

Everyone in the room sees every move and sees who else is there, so what a chain of minds
("Cara thinks Ben thinks Anna ...") believes is where the object was after the last move they
all saw together; a move someone missed is unknown to them and to anyone reasoning about them."""

import random
from dataclasses import dataclass

from socialr1.items import LETTERS, MCQItem

NAMES = ("Anna", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack")
OBJECTS = ("ball", "key", "cake", "book", "hat", "coin", "toy", "apple")
CONTAINERS = (
    "box", "bag", "basket", "drawer", "jar", "chest", "bucket", "tin",
    "crate", "cupboard",
)
ROOMS = ("kitchen", "garden", "attic", "hall", "shed", "playroom")
ORDINALS = ("first", "second", "third", "fourth")
KINDS = ("false", "false", "false", "true", "reality")  # 60% false belief, 20% control, 20% reality


@dataclass(frozen=True)
class Move:
    mover: str
    dest: str
    seen_by: tuple[str, ...]  # everyone in the room at the time


@dataclass(frozen=True)
class Story:
    cast: tuple[str, ...]
    obj: str
    containers: tuple[str, ...]  # as named in the story; the object starts in the first
    moves: tuple[Move, ...]
    text: str

    def seen_together(self, chain: tuple[str, ...]) -> str:
        """Where the object was after the last move everyone in chain saw."""
        seen = [m.dest for m in self.moves if set(chain) <= set(m.seen_by)]
        return seen[-1] if seen else self.containers[0]

    @property
    def final(self) -> str:
        return self.moves[-1].dest


def generate_items(
    n: int, seed: int, orders: tuple[int, ...] = (1, 2, 3, 4), containers: int = len(CONTAINERS), fixed_options: bool = False
) -> list[MCQItem]:
    """n items, the same for the same seed; orders cycle so every requested order appears. Stories
    draw their four places (three in the story, one distractor) from the first `containers` of
    CONTAINERS; fixed_options lists the options in CONTAINERS order instead of shuffled (with
    containers=4, every item then offers the same four options in the same order)."""
    if not orders or not set(orders) <= {1, 2, 3, 4}:
        raise ValueError(f"orders must be drawn from 1, 2, 3, 4; got {orders}")
    if not 4 <= containers <= len(CONTAINERS):
        raise ValueError(f"containers must be 4 to {len(CONTAINERS)}; got {containers}")
    rng = random.Random(seed)
    return [_item(rng, orders[i % len(orders)], f"synthetic:seed={seed}:{i}", CONTAINERS[:containers], fixed_options)
            for i in range(n)]


def _item(rng: random.Random, order: int, source: str, places: tuple[str, ...], fixed_options: bool) -> MCQItem:
    kind = rng.choice(KINDS)
    while True:  # resample until the story supports the kind (e.g. someone missed a move)
        story, distractor = _story(rng, order, places)
        chain = tuple(rng.sample(story.cast, order))
        answer = story.final if kind == "reality" else story.seen_together(chain)
        if kind == "reality" or (answer == story.final) == (kind == "true"):
            break
    options = [*story.containers, distractor]
    if fixed_options:
        options.sort(key=places.index)
    else:
        rng.shuffle(options)
    index = options.index(answer)
    if kind == "reality":
        question, ability = f"Where is the {story.obj} now?", "Reality"
    else:
        question = _belief_question(chain, story.obj)
        ability = f"False Belief: {ORDINALS[order - 1]} order"
        if kind == "true":
            ability = "True Belief: control"
    return MCQItem(
        story=story.text,
        question=question,
        options=tuple(options),
        answer=index,
        ability=ability,
        source=source,
        gold_stages=_stages(story, None if kind == "reality" else chain, answer, LETTERS[index]),
    )


def _story(rng: random.Random, order: int, places: tuple[str, ...]) -> tuple[Story, str]:
    """A story with order + 1 characters, some of whom leave; also a container not in it."""
    cast = tuple(rng.sample(NAMES, order + 1))
    room, obj = rng.choice(ROOMS), rng.choice(OBJECTS)
    *containers, distractor = rng.sample(places, 4)
    leavers = rng.sample(cast, rng.randint(1, order))  # someone always stays to do the moves
    steps = ["leave"] * len(leavers) + ["move"] * (1 if order == 1 else rng.randint(1, 2))
    rng.shuffle(steps)
    present, where, moves, exits = list(cast), containers[0], [], iter(leavers)
    lines = [
        f"{_and(cast)} are in the {room}.",
        f"They see {_and([f'a {c}' for c in containers])}.",
        f"The {obj} is in the {containers[0]}.",
    ]
    for step in steps:
        if step == "leave":
            who = next(exits)
            present.remove(who)
            lines.append(f"{who} leaves the {room}.")
        else:
            mover = rng.choice(present)
            where = rng.choice([c for c in containers if c != where])
            moves.append(Move(mover, where, tuple(present)))
            lines.append(f"{mover} moves the {obj} to the {where}.")
    if rng.random() < 0.5:  # coming back after the moves reveals nothing: a cue to ignore
        lines.append(f"{leavers[0]} comes back.")
    return Story(cast, obj, tuple(containers), tuple(moves), " ".join(lines)), distractor


def _belief_question(chain: tuple[str, ...], obj: str) -> str:
    if len(chain) == 1:
        return f"Where will {chain[0]} look for the {obj}?"
    thinks = "".join(f"{name} thinks " for name in chain[1:-1])
    return f"Where does {chain[0]} think {thinks}{chain[-1]} will look for the {obj}?"


def _stages(
    story: Story, chain: tuple[str, ...] | None, answer: str, letter: str
) -> tuple[str, ...]:
    """Cue encoding, cue interpretation, goal clarification, response generation, in story words."""
    obj = story.obj
    moves = " ".join(
        f"{m.mover} moved it to the {m.dest}, seen by {_seen(story, m)}." for m in story.moves
    )
    encoding = f"The {obj} started in the {story.containers[0]}. {moves}"
    if chain is None:
        interpretation = f"The last move put it in the {story.final}, so it is really there."
        goal = f"The question asks where the {obj} is now, not what anyone believes."
        return encoding, interpretation, goal, response_stage(answer, letter)
    by_place: dict[str, list[str]] = {}
    for name in chain:
        by_place.setdefault(story.seen_together((name,)), []).append(name)
    (place, names), *others = by_place.items()
    rest = "".join(f", {_and(n)} in the {p}" for p, n in others)
    interpretation = f"{_and(names)} last saw it in the {place}{rest}."
    if len(chain) == 1:
        goal = f"The question asks where {chain[0]} will look, so I need what {chain[0]} believes."
    else:
        interpretation += f" Together they last saw it in the {answer}."
        goal = f"The question nests {_and(chain)}: I need where they all last saw it."
    return encoding, interpretation, goal, response_stage(answer, letter)


def response_stage(option: str, letter: str) -> str:
    """The last SIP stage of a trace that chooses `option`, labelled `letter`."""
    return f"Weighing the options, the answer is the {option}: option {letter}."


def _seen(story: Story, move: Move) -> str:
    """The shorter of who saw the move and who missed it."""
    missed = [name for name in story.cast if name not in move.seen_by]
    if not missed:
        return "all"
    return f"all but {_and(missed)}" if len(missed) < len(move.seen_by) else _and(move.seen_by)


def _and(words: tuple[str, ...] | list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"

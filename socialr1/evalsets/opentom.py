"""OpenToM (Xu et al., ACL 2024): 596 narratives, 13,708 questions in 7 genres with closed label
sets, asked as multiple choice over each genre's labels. Fine-grained location questions choose
between the story's original and new place, as the authors' evaluator scores them (the 2 answers
that are neither are left out)."""

from socialr1.data import DataError
from socialr1.evalsets.common import Benchmark, Sources, field_of, mcq, read_json

GENRES = ("attitude", "location_cg_fo", "location_cg_so", "location_fg_fo_new", "location_fg_so_new",
          "multihop_fo", "multihop_so")
LABELS = {
    "attitude": ("positive", "neutral", "negative"),
    "location_cg": ("Yes", "No"),
    "fullness": ("more full", "equally full", "less full"),
    "accessibility": ("more accessible", "equally accessible", "less accessible"),
}


def _options(genre: str, question: str, meta: dict) -> tuple[str, ...]:
    if genre == "attitude":
        return LABELS["attitude"]
    if genre.startswith("location_cg"):
        return LABELS["location_cg"]
    if genre.startswith("location_fg"):
        return meta["plot_info"]["original_place"], meta["plot_info"]["move_to_place"]
    return LABELS["fullness" if "fullness" in question else "accessibility"]


def load(src: Sources) -> Benchmark:
    folder = src.folder("opentom") / "opentom_data"
    meta = read_json(folder / "meta_data.json")
    items = []
    for genre in GENRES:
        for key, questions in read_json(folder / f"{genre}.json").items():
            if key not in meta:
                raise DataError(f"opentom/{genre}.json: story {key!r} not in meta_data.json")
            for q, rec in enumerate(questions):
                where = f"opentom/{genre}:{key}:{q}"
                question, gold = field_of(rec, "question", where), field_of(rec, "answer", where)
                options = _options(genre, question, meta[key])
                if gold not in options:
                    if genre.startswith("location_fg"):
                        continue
                    raise DataError(f"{where}: answer {gold!r} not among {options}")
                items.append(mcq(meta[key]["narrative"], question, options, options.index(gold),
                                 genre.removesuffix("_new"), where))
    return Benchmark("opentom", items, note="7 genres, normal-length stories")

"""SIP rewards for a whole rollout batch at once, on token-id tensors, on the rollouts' device.

A batch [B, T] of token ids becomes one flat byte stream (rows back to back) through a per-vocab
byte table, so that markers, whitespace and words are found exactly whatever the BPE split.
Markers are matched at candidate positions (bytes that start a marker), words are hashed with a
polynomial hash built from prefix sums, and per-row questions (is this word in the item's story?)
become sorted searches on keys that carry the row in their high bits. The definitions are those
of `socialr1.rewards_reference`, which the tests check this module against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Literal, Sequence

import torch
from tokenizers import decoders
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from socialr1 import rewards_reference as ref
from socialr1.items import LETTERS, MCQItem
from socialr1.sip import SIPFormat

Tensor = torch.Tensor
KEY_BITS = 31  # word and n-gram keys are < ref.HASH_MOD < 2**31; row << KEY_BITS | key is a per-row key
BIG = torch.iinfo(torch.int64).max  # ends every sorted search array, so none is empty


@dataclass
class RewardConfig:
    """SIP reward: total = format * (w_accuracy * accuracy + tau(step) * (w_structure * structure +
    w_content * content)) * length (multiplicative mode); every component lies in [0, 1]."""

    mode: Literal["multiplicative", "additive"] = "multiplicative"
    """multiplicative: as above. additive: w_format * format + w_accuracy * accuracy + tau *
    (w_structure * structure + w_content * content) + w_length * length."""
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
    """Length window slope k: sigmoid(k (L - len_min) / (len_max - len_min)) * (1 - sigmoid(k (L - len_max) / (len_max - len_min)))."""
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
    """Share of a stage's n-grams copied verbatim from the story tolerated before its content score drops (0 at 100%)."""
    content_model: str | None = None
    """Path of a Hugging Face sequence-classification model scoring (story + question, stage
    segment) pairs; replaces the default token-grounding content scorer when set."""
    content_model_batch_size: int = 32
    """Stage segments per forward pass of the content model."""
    content_model_max_length: int = 512
    """Token limit of a content-model input (longer pairs are truncated)."""


@dataclass
class ItemFeatures:
    """Per-item targets as padded tensors (rows: items); key sets sorted, padded with HASH_MOD."""

    gold: Tensor  # [N] gold option index
    n_options: Tensor  # [N]
    grounded: Tensor  # [N, S] content words of story, question, options, and the lexicon
    entities: Tensor  # [N, E]
    question: Tensor  # [N, Q]
    options: Tensor  # [N, n_opt_max, O]
    story_ngrams: Tensor  # [N, G]
    prompts: list[str]  # story + question, for the optional content model

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


def _to(value, device):
    return value.to(device) if isinstance(value, Tensor) else value


def _padded(rows: Sequence[Iterable[int]], width: int = 1) -> Tensor:
    """Sorted rows padded with HASH_MOD: [len(rows), max(width, longest)]."""
    rows = [sorted(r) for r in rows]
    out = torch.full((len(rows), max([width, *map(len, rows)])), ref.HASH_MOD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """Bytes of every token id as decoding with special tokens skipped produces them."""
    added = tokenizer.added_tokens_decoder
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and isinstance(backend.decoder, decoders.ByteLevel)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    out = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or tok is None:
            out.append(b"")
        elif i in added:
            out.append(added[i].content.encode())
        elif byte_level and all(c in to_byte for c in tok):
            out.append(bytes(to_byte[c] for c in tok))
        else:  # not byte-level BPE: the best per-token approximation
            out.append(tokenizer.decode([i]).encode())
    return out


def _byte_lut(pred: Callable[[int], int]) -> Tensor:
    return torch.tensor([int(pred(b)) for b in range(256)], dtype=torch.long)


def _mod_powers(base: int, n: int) -> Tensor:
    """[base**j mod HASH_MOD for j < n], by doubling."""
    out = torch.ones(1, dtype=torch.long)
    while len(out) < n:
        out = torch.cat([out, out * pow(base, len(out), ref.HASH_MOD) % ref.HASH_MOD])
    return out[:n]


@dataclass
class _Flat:
    """A batch of completions as one byte stream: each row's bytes, then a NUL separator, so that
    neither words nor markers run from one row into the next."""

    chars: Tensor  # [N] byte values
    start: Tensor  # [B] first byte of each row
    end: Tensor  # [B] one past each row's last byte (its separator)
    n_nonblank: Tensor  # [N + 1] non-whitespace bytes before each position

    def row_of(self, pos: Tensor) -> Tensor:
        return torch.searchsorted(self.end, pos.contiguous(), right=True)


@dataclass
class _Words:
    """Every word of the batch in text order."""

    key: Tensor  # [NW]
    start: Tensor  # [NW] position (in the flat stream) of the first character
    length: Tensor  # [NW]
    row: Tensor  # [NW]


@dataclass
class _Markers:
    """Occurrences of the markers [think open, think close, answer open, answer close, 4 stage
    headers]; stage headers count only where they end before the row's first think close."""

    count: Tensor  # [B, 8]
    first: Tensor  # [B, 8] first start, or the row end if absent
    region_end: Tensor  # [B] first think close, or the row end
    headers: Tensor  # [H] sorted starts of all stage headers that count


class SIPReward:
    """Scores completions of SIP prompts; see RewardConfig for the total and rewards_reference for
    the definition of every component."""

    _device_tensors = ("vocab_bytes", "vocab_start", "vocab_len", "markers", "marker_len", "marker_first", "char_code", "nonblank", "stop", "mental", "char_pow", "char_inv_pow", "ngram_pow")

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: RewardConfig = RewardConfig(), total_steps: int = 1, fmt: SIPFormat = SIPFormat()):
        headers = [fmt.stage_header(k) for k in range(len(fmt.stages))]
        if len(headers) != 4:
            raise ValueError(f"the SIP reward scores four stages, got {fmt.stages}")
        if any(a != b and b.startswith(a) for a in headers for b in headers):
            raise ValueError(f"no stage header may begin another: {headers}")  # keeps stage segments disjoint
        self.tokenizer, self.config, self.total_steps, self.fmt = tokenizer, config, total_steps, fmt
        pieces = [b"\0", *_token_bytes(tokenizer), b""]  # entry 0: the row separator; last: pads, unknown ids
        lens = torch.tensor(list(map(len, pieces)))
        self.vocab_bytes = torch.tensor(list(b"".join(pieces)), dtype=torch.long)
        self.vocab_start = (lens.cumsum(0) - lens)[1:]  # [V + 1]
        self.vocab_len = lens[1:]
        encoded = [m.encode() for m in (fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close, *headers)]
        self.marker_len = torch.tensor(list(map(len, encoded)))  # [8]
        self.markers = torch.full((8, int(self.marker_len.max())), -1, dtype=torch.long)  # [8, Lm], -1: past the end
        for i, m in enumerate(encoded):
            self.markers[i, : len(m)] = torch.tensor(list(m))
        self.marker_first = _byte_lut(lambda b: any(m[0] == b for m in encoded))
        self.char_code = _byte_lut(lambda b: ref.CHAR_CODE.get(chr(b), 0))
        self.nonblank = _byte_lut(lambda b: chr(b) not in ref.WHITESPACE)
        self.stop, self.mental = (torch.tensor(sorted(s)) for s in (ref.STOP_KEYS, ref.MENTAL_KEYS))
        self.char_pow = self.char_inv_pow = torch.ones(1, dtype=torch.long)
        self.ngram_pow = _mod_powers(ref.NGRAM_BASE, max(config.rep_ngram, config.copy_ngram))
        self._content_model = None
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ items and entry points

    def encode_items(self, items: Sequence[MCQItem]) -> ItemFeatures:
        targets = [ref.item_targets(it, self.config) for it in items]
        n_opt = max(t.n_options for t in targets)
        opt_width = max([1, *(len(o) for t in targets for o in t.options)])
        return ItemFeatures(
            gold=torch.tensor([t.gold for t in targets]),
            n_options=torch.tensor([t.n_options for t in targets]),
            grounded=_padded([t.grounded for t in targets]),
            entities=_padded([t.entities for t in targets]),
            question=_padded([t.question for t in targets]),
            options=torch.stack([_padded([*t.options, *[()] * (n_opt - t.n_options)], opt_width) for t in targets]),
            story_ngrams=_padded([t.story_ngrams for t in targets]),
            prompts=[f"{it.story}\n{it.question}" for it in items],
        )

    def score_texts(
        self,
        completions: Sequence[str],
        answers: Sequence[str],
        stories: Sequence[str],
        step: int,
        questions: Sequence[str] | None = None,
        options: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Tensor]:
        """Text-level entry: builds items, tokenises and calls `score`. Without `options`, letters
        up to D (or the gold one) are valid and Response Generation has no option text to cover."""
        n = len(completions)
        questions = questions or [""] * n
        options = options or [[""] * max(4, LETTERS.index(a) + 1) for a in answers]
        items = [MCQItem(s, q, tuple(o), LETTERS.index(a)) for s, q, o, a in zip(stories, questions, options, answers)]
        rows = self.tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        ids = torch.full((n, max([1, *map(len, rows)])), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return self.score(ids, mask, self.encode_items(items), torch.arange(n), step)

    @torch.no_grad()
    def score(self, completion_ids: Tensor, completion_mask: Tensor, feats: ItemFeatures, item_index: Tensor, step: int) -> dict[str, Tensor]:
        """completion_ids, completion_mask: [B, T]; item_index: [B] rows of feats -> dict of [B] float32."""
        self._to(completion_ids.device)
        feats, item_index, mask = feats.to(completion_ids.device), item_index.to(completion_ids.device), completion_mask.bool()
        text = self._flatten(completion_ids, mask)
        marks = self._markers(text)
        words = self._words(text)
        chosen = self._choice(text, marks, feats.n_options[item_index])
        counts, firsts, seg = self._segments(marks)
        stage = self._stage_of(words, seg)  # [NW] 0..3, or 4 outside every stage
        content_word = (words.length >= 2) & ~_in_sorted(words.key, self.stop)  # [NW]
        structure, good = self._structure(counts, firsts, _per_stage(words.row, stage, content_word, len(item_index)))
        if self.config.content_model:
            content = self._model_content(text, seg, good, feats, item_index)
        else:
            content = self._content(words, stage, content_word, good, feats, item_index, chosen)
        parts = {
            "format": self._format(text, marks, chosen).double(),
            "accuracy": (chosen == feats.gold[item_index]).double(),
            "structure": structure,
            "content": content,
            "length": self._length(mask.sum(1)) * self._repetition(words, len(item_index)),
        }
        tau = ref.curriculum(step, self.total_steps, self.config)
        return {k: v.float() for k, v in {"total": ref.combine(parts, tau, self.config), **parts}.items()}

    def _to(self, device: torch.device) -> None:
        if device != self._device:
            for name in self._device_tensors:
                setattr(self, name, getattr(self, name).to(device))
            self._device = device

    # ------------------------------------------------------------------ bytes, markers, words

    def _flatten(self, ids: Tensor, mask: Tensor) -> _Flat:
        B, T = ids.shape
        vocab = len(self.vocab_len) - 1
        ids = torch.where(mask & (ids >= 0) & (ids < vocab), ids, vocab).flatten()  # pads, unknown ids: empty
        sep = ids.new_ones(B, 1)
        lens = torch.cat([self.vocab_len.index_select(0, ids).view(B, T), sep], 1).flatten()  # [B * (T + 1)]
        src = torch.cat([self.vocab_start.index_select(0, ids).view(B, T), sep - 1], 1).flatten()  # separator: entry 0
        offsets = lens.cumsum(0)
        N = int(offsets[-1])
        if N > 2**26:  # keeps the word-hash prefix sums (code < 37, powers < 2**31) below 2**63
            raise ValueError(f"{N} bytes in one batch: score it in smaller pieces")
        index = torch.repeat_interleave(src - (offsets - lens), lens, output_size=N) + torch.arange(N, device=ids.device)
        chars = self.vocab_bytes.index_select(0, index)  # [N]
        end = offsets.view(B, T + 1)[:, -1] - 1
        row_len = lens.view(B, T + 1)[:, :-1].sum(1)
        n_nonblank = torch.cat([end.new_zeros(1), self.nonblank.index_select(0, chars).cumsum(0)])
        return _Flat(chars, end - row_len, end, n_nonblank)

    def _markers(self, text: _Flat) -> _Markers:
        B, (M, Lm) = len(text.start), self.markers.shape
        cand = torch.nonzero(self.marker_first.index_select(0, text.chars)).squeeze(1)  # [K] bytes that start a marker
        span = (cand[:, None] + torch.arange(Lm, device=cand.device)).clamp(max=len(text.chars) - 1)
        row = text.row_of(cand)
        hit = ((text.chars[span][:, None, :] == self.markers) | (self.markers < 0)).all(-1)  # [K, 8]
        hit &= cand[:, None] + self.marker_len <= text.end[row, None]
        region_end = text.end.scatter_reduce(0, row[hit[:, 1]], cand[hit[:, 1]], "amin")
        hit[:, 4:] &= cand[:, None] + self.marker_len[4:] <= region_end[row, None]
        slot = (row[:, None] * M + torch.arange(M, device=cand.device))[hit]
        count = torch.bincount(slot, minlength=B * M).view(B, M)
        first = text.end.repeat_interleave(M).scatter_reduce(0, slot, cand[:, None].expand(-1, M)[hit], "amin").view(B, M)
        return _Markers(count, first, region_end, cand[hit[:, 4:].any(1)])

    def _words(self, text: _Flat) -> _Words:
        N = len(text.chars)
        code = self.char_code.index_select(0, text.chars)  # [N] 0 outside words
        alnum = (code > 0).to(torch.int8)
        edges = torch.nonzero(torch.diff(alnum, prepend=alnum.new_zeros(1))).squeeze(1)  # word starts, ends alternate
        first, stop = edges[0::2], edges[1::2]  # the stream ends with a separator, so every word ends
        if len(self.char_pow) < N + 1:
            self.char_pow = _mod_powers(ref.CHAR_BASE, 2 * N + 1).to(code.device)
            self.char_inv_pow = _mod_powers(pow(ref.CHAR_BASE, ref.HASH_MOD - 2, ref.HASH_MOD), 2 * N + 1).to(code.device)
        prefix = torch.cat([code.new_zeros(1), (code * self.char_pow[:N]).cumsum(0)])  # [N + 1] sum of code * BASE**pos
        shifted = (prefix[stop] - prefix[first]) % ref.HASH_MOD  # = key * BASE**first
        key = shifted * self.char_inv_pow[first] % ref.HASH_MOD
        return _Words(key, first, stop - first, text.row_of(first))

    # ------------------------------------------------------------------ components

    def _choice(self, text: _Flat, marks: _Markers, n_options: Tensor) -> Tensor:
        """[B] chosen option index, -1 unless exactly one answer pair holds exactly one valid letter."""
        a, b = marks.first[:, 2] + self.marker_len[2], marks.first[:, 3]  # payload [a, b)
        ok = (marks.count[:, 2] == 1) & (marks.count[:, 3] == 1) & (a <= b)
        a, b = torch.where(ok, a, 0), torch.where(ok, b, 0)
        ns = text.n_nonblank
        letter_pos = torch.searchsorted(ns, ns[a] + 1) - 1  # first non-blank byte at or after a
        letter = text.chars[letter_pos.clamp(max=len(text.chars) - 1)] - ord("A")
        ok &= (ns[b] - ns[a] == 1) & (letter >= 0) & (letter < n_options)
        return torch.where(ok, letter, -1)

    def _format(self, text: _Flat, marks: _Markers, chosen: Tensor) -> Tensor:
        ns, L = text.n_nonblank, self.marker_len
        to, tc, ao, ac = marks.first[:, :4].unbind(1)

        def blank(a: Tensor, b: Tensor) -> Tensor:
            return ns[b.clamp(min=a)] == ns[a]

        return (
            (chosen >= 0)  # implies one answer pair
            & (marks.count[:, 0] == 1)
            & (marks.count[:, 1] == 1)
            & blank(text.start, to)
            & (to + L[0] <= tc)
            & (tc + L[1] <= ao)
            & blank((tc + L[1]).clamp(max=ao), ao)
            & blank((ac + L[3]).clamp(max=text.end), text.end)
        )

    def _segments(self, marks: _Markers) -> tuple[Tensor, Tensor, Tensor]:
        """Stage header counts [B, 4], first starts [B, 4] (-1 if absent), and segments [B, 4, 2]:
        [first header end, next header start of any stage or the region end); empty if absent."""
        count, first = marks.count[:, 4:], marks.first[:, 4:].contiguous()
        present = count > 0
        headers = torch.cat([marks.headers, marks.headers.new_full((1,), BIG)])
        following = headers[torch.searchsorted(headers[:-1], first, right=True)]  # [B, 4]
        seg = torch.stack([first + self.marker_len[4:], torch.minimum(following, marks.region_end[:, None])], -1)
        return count, torch.where(present, first, -1), torch.where(present[..., None], seg, 0)

    @staticmethod
    def _stage_of(words: _Words, seg: Tensor) -> Tensor:
        """[NW] stage whose segment holds each word's start (segments are disjoint), 4 for none."""
        bounds = seg.view(len(seg), 8).index_select(0, words.row).view(-1, 4, 2)  # [NW, 4, 2]
        inside = (words.start[:, None] >= bounds[..., 0]) & (words.start[:, None] < bounds[..., 1])  # [NW, 4]
        return torch.where(inside.any(1), inside.to(torch.int8).argmax(1), 4)



    def _structure(self, counts: Tensor, firsts: Tensor, n_content: Tensor) -> tuple[Tensor, Tensor]:
        """[B] structure score and [B, 4] good stages (present with enough content words)."""
        B, n = counts.shape
        good = (counts > 0) & (n_content >= self.config.min_stage_words)
        both = (counts[:, :, None] > 0) & (counts[:, None, :] > 0) & (firsts[:, :, None] < firsts[:, None, :])  # [B, 4, 4]
        ordered = torch.triu(both, diagonal=1).sum((1, 2))
        extra = (counts - 1).clamp(min=0).sum(1)
        raw = 0.5 * good.double().mean(1) + 0.5 * ordered.double() / (n * (n - 1) / 2)
        return raw * (1.0 - self.config.stage_repeat_penalty * extra.double()).clamp(min=0.0), good

    def _content(self, words: _Words, stage: Tensor, content: Tensor, good: Tensor, feats: ItemFeatures, items: Tensor, chosen: Tensor) -> Tensor:
        B, cfg = len(items), self.config
        grounded = _member(feats.grounded[items], words.row, words.key)
        n_content = _per_stage(words.row, stage, content, B)
        precision = _per_stage(words.row, stage, content & grounded, B) / n_content.clamp(min=1)
        mental = _per_stage(words.row, stage, _in_sorted(words.key, self.mental), B)[:, 1]
        option = feats.options[items, chosen.clamp(min=0)]  # [B, O]
        term = torch.stack(
            [
                self._coverage(words, stage == 0, feats.entities[items]),
                (mental / cfg.mental_target).clamp(max=1.0),
                self._coverage(words, stage == 2, feats.question[items]),
                torch.where(chosen >= 0, self._coverage(words, stage == 3, option), 0.0),
            ],
            1,
        )  # [B, 4]
        g = cfg.grounding_weight
        per_stage = good * (g * precision + (1 - g) * term) * _tolerance(self._copied(words, stage, feats.story_ngrams[items]), cfg.copy_tolerance)
        return per_stage.mean(1)

    @staticmethod
    def _coverage(words: _Words, inside: Tensor, targets: Tensor) -> Tensor:
        """[B] share of each row's targets [B, S] (padded with HASH_MOD) among its words where inside [NW]; 1 if no targets."""
        B, S = targets.shape
        flat = torch.cat([(torch.arange(B, device=targets.device)[:, None] << KEY_BITS | targets).flatten(), targets.new_full((1,), BIG)])
        query = words.row[inside] << KEY_BITS | words.key[inside]
        at = torch.searchsorted(flat, query)
        found = torch.zeros(B * S + 1, dtype=torch.bool, device=targets.device)
        found[at[flat[at] == query]] = True
        valid = targets != ref.HASH_MOD
        hits = (found[:-1].view(B, S) & valid).sum(1)
        return torch.where(valid.any(1), hits / valid.sum(1).clamp(min=1), 1.0)

    def _ngrams(self, words: _Words, n: int) -> tuple[Tensor, Tensor]:
        """Keys [NG] of all runs of n consecutive words within one row, and each run's first word."""
        first = torch.arange(max(len(words.key) - n + 1, 0), device=words.key.device)
        first = first[words.row[first] == words.row[first + n - 1]]
        key = sum(words.key[first + j] * self.ngram_pow[j] % ref.HASH_MOD for j in range(n)) % ref.HASH_MOD
        return key, first

    def _copied(self, words: _Words, stage: Tensor, story_ngrams: Tensor) -> Tensor:
        """[B, 4] share of each stage's word n-grams found verbatim in the item's story (0 if none)."""
        n, B = self.config.copy_ngram, len(story_ngrams)
        key, first = self._ngrams(words, n)
        row, where = words.row[first], stage[first]
        where = torch.where(where == stage[first + n - 1], where, 4)
        hit = _member(story_ngrams, row, key)
        return _per_stage(row, where, hit, B) / _per_stage(row, where, torch.ones_like(hit), B).clamp(min=1)

    def _repetition(self, words: _Words, B: int) -> Tensor:
        """[B] repetition factor from the share of each row's word n-grams that repeat an earlier one."""
        key, first = self._ngrams(words, self.config.rep_ngram)
        combined = (words.row[first] << KEY_BITS | key).sort().values
        row = combined >> KEY_BITS
        repeated = torch.bincount(row[1:][combined[1:] == combined[:-1]], minlength=B)
        return _tolerance(repeated / torch.bincount(row, minlength=B).clamp(min=1), self.config.rep_tolerance)

    def _length(self, n_tokens: Tensor) -> Tensor:
        cfg = self.config
        width, k, L = cfg.len_max - cfg.len_min, cfg.len_sharpness, n_tokens.double()
        return torch.sigmoid(k * (L - cfg.len_min) / width) * (1 - torch.sigmoid(k * (L - cfg.len_max) / width))

    # ------------------------------------------------------------------ optional learned content scorer

    def _model_content(self, text: _Flat, seg: Tensor, good: Tensor, feats: ItemFeatures, items: Tensor) -> Tensor:
        """[B] mean over stages of P(good segment) from the content model (0 for stages that are not
        good), batched over the (story + question, header + segment text) pairs of good stages."""
        if self._content_model is None:
            self._content_model = _StageClassifier(self.config, good.device)
        rows, stages = torch.nonzero(good, as_tuple=True)
        chars = text.chars.to("cpu", torch.uint8).numpy().tobytes()
        pairs = [
            (feats.prompts[i], f"{self.fmt.stage_header(k)} {chars[a:b].decode(errors='replace').strip()}")
            for i, k, (a, b) in zip(items[rows].tolist(), stages.tolist(), seg[rows, stages].tolist())
        ]
        scores = torch.zeros(good.shape, dtype=torch.double, device=good.device)
        scores[rows, stages] = self._content_model(pairs).to(scores)
        return scores.mean(1)


def _per_stage(row: Tensor, stage: Tensor, weight: Tensor, B: int) -> Tensor:
    """[B, 4] sum of weight [n] over the words or n-grams (rows [n], stages [n] in 0..4) in each stage."""
    return torch.bincount(row * 5 + stage, weight.double(), minlength=B * 5).view(B, 5)[:, :4]


class _StageClassifier:
    """A Hugging Face sequence-classification model scoring (prompt, stage segment) pairs in [0, 1]:
    sigmoid of a single logit, or the probability of the last label."""

    def __init__(self, config: RewardConfig, device: torch.device):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(config.content_model)
        self.model = AutoModelForSequenceClassification.from_pretrained(config.content_model).to(device).eval()
        self.batch_size, self.max_length, self.device = config.content_model_batch_size, config.content_model_max_length, device

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[str, str]]) -> Tensor:
        scores = [torch.zeros(0, device=self.device)]
        for i in range(0, len(pairs), self.batch_size):
            prompts, segments = zip(*pairs[i : i + self.batch_size])
            enc = self.tokenizer(list(prompts), list(segments), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            logits = self.model(**enc.to(self.device)).logits.float()  # [b, labels]
            scores.append(torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(-1)[:, -1])
        return torch.cat(scores)


def _tolerance(frac: Tensor, tolerance: float) -> Tensor:
    return ((1.0 - frac) / (1.0 - tolerance)).clamp(0.0, 1.0)


def _in_sorted(key: Tensor, values: Tensor) -> Tensor:
    """[n] whether each key [n] is in the sorted 1-D values."""
    at = torch.searchsorted(values, key).clamp(max=len(values) - 1)
    return values[at] == key


def _member(sets: Tensor, row: Tensor, key: Tensor) -> Tensor:
    """[n] whether key [n] is in row `row` [n] of sets [B, S] (each row sorted, padded HASH_MOD)."""
    B = sets.shape[0]
    flat = (torch.arange(B, device=sets.device)[:, None] << KEY_BITS | sets).flatten()
    flat = torch.cat([flat, flat.new_full((1,), BIG)])
    query = row << KEY_BITS | key
    return flat[torch.searchsorted(flat, query)] == query

"""The lexical SIP scorers (format, accuracy, structure, content, length) for a whole rollout
batch at once, on token-id tensors, on the rollouts' device.

A batch [B, T] of token ids becomes one flat byte stream (rows back to back, NUL-separated) via a
per-vocabulary byte table built once from the tokenizer, so markers, whitespace and words are found
exactly, whatever the BPE split. The stream is decoded as Python decodes it (UTF-8,
errors="replace": one U+FFFD per invalid sequence), and whitespace is what `str.isspace` says of the
decoded characters. Markers are matched at candidate bytes (those that start one), words are hashed
with a polynomial hash taken from prefix sums, and per-row questions ("is this word in this row's
story?") become lookups of keys that carry the row in their high bits. Per-item data is tokenised
into padded key tensors once by `encode_items`. The per-sample definitions are
in tests/rewards_reference.py, written independently, which the tests check this module against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import torch
from tokenizers import decoders
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from socialr1.errors import ConfigError
from socialr1.items import MCQItem
from socialr1.rewards.config import RewardConfig
from socialr1.rewards.constants import CHAR_BASE, CHAR_CODE, HASH_MOD, NGRAM_BASE, WHITESPACE, utf8_table
from socialr1.rewards.targets import GROUNDED_KEYS, MENTAL_KEYS, STOP_KEYS, item_targets
from socialr1.sip import SIPFormat

Tensor = torch.Tensor
KEY_BITS = 31  # word and n-gram keys are < HASH_MOD < 2**31; row << KEY_BITS | key is a per-row key
BIG = torch.iinfo(torch.int64).max  # ends every sorted search array, so none is empty


@dataclass
class ItemFeatures:
    """Per-item targets as padded tensors (rows: items); key sets sorted, padded with HASH_MOD."""

    gold: Tensor  # [N] gold option index
    n_options: Tensor  # [N]
    context: Tensor  # [N, S] content words of story, question and options
    entities: Tensor  # [N, E]
    question: Tensor  # [N, Q]
    options: Tensor  # [N, n_opt_max, O]
    story_ngrams: Tensor  # [N, G]
    items: list[MCQItem]  # for the scorers that read text (judge, reward model)

    def to(self, device: torch.device | str) -> ItemFeatures:
        return ItemFeatures(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


def _to(value, device):
    return value.to(device) if isinstance(value, Tensor) else value


def _padded(rows: Sequence[Iterable[int]], width: int = 1) -> Tensor:
    """Sorted rows padded with HASH_MOD: [len(rows), max(width, longest)]."""
    rows = [sorted(r) for r in rows]
    out = torch.full((len(rows), max([width, *map(len, rows)])), HASH_MOD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _token_bytes(tokenizer: PreTrainedTokenizerBase, markers: Iterable[str] = ()) -> list[bytes]:
    """Bytes of every token id as decoding with special tokens skipped produces them, except that
    special tokens spelling a marker keep their text: some tokenizers mark <think> special."""
    added = tokenizer.added_tokens_decoder
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    special -= {i for i, t in added.items() if t.content in set(markers)}
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


def _inverse(base: int) -> int:
    return pow(base, HASH_MOD - 2, HASH_MOD)


def _mod_powers(base: int, n: int) -> Tensor:
    """[base**j mod HASH_MOD for j < n], by doubling."""
    out = torch.ones(1, dtype=torch.long)
    while len(out) < n:
        out = torch.cat([out, out * pow(base, len(out), HASH_MOD) % HASH_MOD])
    return out[:n]


def _direct_table(flags: dict[int, int]) -> Tensor:
    """An open-address-free hash table of word keys: entry key << 3 | flags at slot key % size,
    the smallest power-of-two size where no two keys share a slot; -1 elsewhere."""
    bits = 8
    while len({k & ((1 << bits) - 1) for k in flags}) < len(flags):
        bits += 1
    table = torch.full((1 << bits,), -1, dtype=torch.long)
    for k, f in flags.items():
        table[k & ((1 << bits) - 1)] = k << 3 | f
    return table


# Byte classes, packed with the byte itself into one int per byte of the vocabulary table.
CODE_SHIFT, NONBLANK_SHIFT, MARKER_SHIFT = 8, 14, 15
NONBLANK_BIT, MARKER_BIT = 1 << NONBLANK_SHIFT, 1 << MARKER_SHIFT
REPLACEMENT = 0xFFFD  # the character of an invalid UTF-8 sequence
# Flags of the global word lists in the direct table.
STOP, MENTAL, LEXICON = 1, 2, 4


@dataclass
class Flat:
    """A batch of completions as one byte stream: each row's bytes, then a NUL separator, so that
    neither words nor markers run from one row into the next."""

    packed: Tensor  # [N] byte | CHAR_CODE << CODE_SHIFT | NONBLANK_BIT (not an ASCII space) | MARKER_BIT (may start a marker)
    start: Tensor  # [B] first byte of each row
    end: Tensor  # [B] one past each row's last byte (its separator)
    n_nonblank: Tensor  # [N + 1] bytes before each position that are not part of a whitespace character
    lead: Tensor  # [N] bool: the byte starts a character of the decoded text
    code: Tensor  # [N] that character's code point (REPLACEMENT for an invalid sequence), 0 on other bytes

    def row_of(self, pos: Tensor) -> Tensor:
        return torch.searchsorted(self.end, pos.contiguous(), right=True)

    def bytes_at(self, pos: Tensor) -> Tensor:
        return self.packed[pos.clamp(0, len(self.packed) - 1)] & 255


def decode_utf8(byte: Tensor, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Python's `bytes.decode("utf-8", errors="replace")` of a byte stream [N]: (lead, code) of
    Flat, and [W] where the characters other than ASCII start. table: constants.utf8_table(). A
    sequence takes the continuation bytes that fit it (its second byte within the lead's own
    range); one cut short, and every byte that starts none, decodes to one REPLACEMENT, as the
    maximal invalid subsequences of the Unicode standard. Only the non-ASCII bytes are looked at:
    an ASCII byte is always a character of its own."""
    N = len(byte)
    pos = torch.nonzero(byte >= 0x80).squeeze(1)  # [M]
    b0 = byte.index_select(0, pos)
    b1, b2, b3 = (  # the next three bytes; past the end 0, which continues nothing
        torch.where(pos + k < N, byte.index_select(0, (pos + k).clamp(max=max(N - 1, 0))), 0) for k in (1, 2, 3)
    )
    need, lo, hi, valid = table.index_select(1, b0)  # [M] each, as if each byte started a sequence
    ok1 = (need > 1) & (b1 >= lo) & (b1 <= hi)
    ok2 = ok1 & (need > 2) & ((b2 & 0xC0) == 0x80)
    ok3 = ok2 & (need > 3) & ((b3 & 0xC0) == 0x80)
    taken = ok1.long() + ok2 + ok3  # continuation bytes the sequence starting here takes
    is_cont = (b0 & 0xC0) == 0x80
    k = torch.arange(len(pos), device=byte.device)
    owner = torch.where(is_cont, -1, k).cummax(0).values  # [M] the last non-ASCII non-continuation byte before
    o = owner.clamp(min=0)
    lead_hi = ~is_cont | (owner < 0) | (pos - pos.index_select(0, o) > taken.index_select(0, o))  # an ASCII byte between: > taken
    code_hi = torch.where(
        need == 2, (b0 & 0x1F) << 6 | (b1 & 0x3F),
        torch.where(need == 3, (b0 & 0x0F) << 12 | (b1 & 0x3F) << 6 | (b2 & 0x3F),
                    (b0 & 0x07) << 18 | (b1 & 0x3F) << 12 | (b2 & 0x3F) << 6 | (b3 & 0x3F)),
    )
    code_hi = torch.where((valid > 0) & (taken + 1 == need), code_hi, REPLACEMENT)
    lead = torch.ones(byte.shape, dtype=torch.bool, device=byte.device).index_put_((pos,), lead_hi)
    code = byte.clone().index_put_((pos,), torch.where(lead_hi, code_hi, 0))
    return lead, code, pos[lead_hi]


@dataclass
class _Words:
    """Every word of the batch in text order."""

    key: Tensor  # [NW]
    start: Tensor  # [NW] position (in the flat stream) of the first character
    length: Tensor  # [NW]
    row: Tensor  # [NW]
    flags: Tensor  # [NW] STOP | MENTAL | LEXICON


@dataclass
class Markers:
    """Occurrences of the markers [think open, think close, answer open, answer close, 4 stage
    headers]; stage headers count only where they end before the row's first think close."""

    count: Tensor  # [B, 8]
    first: Tensor  # [B, 8] first start, or the row end if absent
    region_end: Tensor  # [B] first think close, or the row end
    headers: Tensor  # [H] sorted starts of all stage headers that count
    pos: Tensor  # [K] bytes that may start a marker, in text order
    row: Tensor  # [K] their rows
    hit: Tensor  # [K, 8] which markers start there (headers: only those that count)


@dataclass
class Parts:
    """The lexical components [B] (float64, in [0, 1]), and where the stages are."""

    format: Tensor
    accuracy: Tensor
    structure: Tensor
    content: Tensor
    length: Tensor
    segments: Tensor  # [B, 4, 2] byte range of each stage's text in the flat stream (empty if absent)
    good: Tensor  # [B, 4] stages present with enough content words


class LexicalScorer:
    """The byte view of completions (shared by every formula) and the lexical SIP components; see
    tests/rewards_reference.py for the definition of each."""

    _device_tensors = (
        "vocab_packed",
        "token_table",
        "marker_chunks",
        "marker_mask",
        "marker_len",
        "word_table",
        "utf8",
        "spaces",
    )

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: RewardConfig,
        fmt: SIPFormat,
        prefix: str = "",
    ):
        """prefix: pre-filled text that every row of the byte view starts with."""
        headers = [fmt.stage_header(k) for k in range(len(fmt.stages))]
        if len(headers) != 4:
            raise ConfigError(f"--sip.stages {' '.join(fmt.stages)}: the SIP reward scores four stages")
        if any(a != b and b.startswith(a) for a in headers for b in headers):
            raise ConfigError(f"--sip.stages: no stage header may begin another: {headers}")  # keeps stage segments disjoint
        self.tokenizer, self.config, self.fmt = tokenizer, config, fmt
        encoded = [m.encode() for m in (fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close, *headers)]
        self.marker_len = torch.tensor(list(map(len, encoded)))  # [8]
        markers = torch.zeros((8, int(self.marker_len.max())), dtype=torch.long)  # [8, Lm]
        for i, m in enumerate(encoded):
            markers[i, : len(m)] = torch.tensor(list(m))
        self.marker_chunks = _chunks(markers)  # [8, C] markers as 7-byte integers
        self.marker_mask = _chunks(
            (torch.arange(markers.shape[1]) < self.marker_len[:, None]) * 255
        )  # bytes that count
        starts = {m[0] for m in encoded}
        byte_class = torch.tensor(
            [
                b
                | CHAR_CODE.get(chr(b), 0) << CODE_SHIFT
                | NONBLANK_BIT * (b >= 0x80 or chr(b) not in WHITESPACE)  # wider spaces: in flatten
                | MARKER_BIT * (b in starts)
                for b in range(256)
            ]
        )
        pieces = [b"\0", *_token_bytes(tokenizer, (fmt.think_open, fmt.think_close, fmt.answer_open, fmt.answer_close)),
                  b"", prefix.encode()]  # entry 0: the row separator; V + 1: pads, unknown ids; V + 2: every row's prefix
        lens = torch.tensor(list(map(len, pieces)))
        self.vocab_packed = byte_class[torch.tensor(list(b"".join(pieces)), dtype=torch.long)]
        self.token_table = ((lens.cumsum(0) - lens) << 16 | lens)[1:]  # [V + 2] start << 16 | length
        if int(lens.max()) >= 1 << 16:
            raise ValueError("a token longer than 65535 bytes")
        flags = {
            k: STOP * (k in STOP_KEYS) | MENTAL * (k in MENTAL_KEYS) | LEXICON * (k in GROUNDED_KEYS)
            for k in STOP_KEYS | GROUNDED_KEYS
        }
        self.word_table = _direct_table(flags)
        self.utf8 = utf8_table()
        self.spaces = torch.tensor(sorted(map(ord, WHITESPACE)))
        self._powers: dict[int, Tensor] = {}  # base -> [base**j mod HASH_MOD], grown on demand
        self._device = torch.device("cpu")

    # ------------------------------------------------------------------ items and entry points

    def encode_items(self, items: Sequence[MCQItem]) -> ItemFeatures:
        targets = [item_targets(it, self.config.max_entities, self.config.copy_ngram) for it in items]
        n_opt = max(t.n_options for t in targets)
        opt_width = max([1, *(len(o) for t in targets for o in t.options)])
        return ItemFeatures(
            gold=torch.tensor([t.gold for t in targets]),
            n_options=torch.tensor([t.n_options for t in targets]),
            context=_padded([t.grounded - GROUNDED_KEYS for t in targets]),  # the lexicon is in word_table
            entities=_padded([t.entities for t in targets]),
            question=_padded([t.question for t in targets]),
            options=torch.stack([_padded([*t.options, *[()] * (n_opt - t.n_options)], opt_width) for t in targets]),
            story_ngrams=_padded([t.story_ngrams for t in targets]),
            items=list(items),
        )

    def parts(self, text: Flat, marks: Markers, mask: Tensor, feats: ItemFeatures, items: Tensor) -> Parts:
        """The lexical components of a batch: text and marks from `flatten` and `markers`, mask [B, T]
        the completion mask, feats on the batch's device, items [B] rows of feats."""
        B = len(items)
        words = self._words(text)
        chosen = self._choice(text, marks, feats.n_options[items])
        counts, firsts, seg = self._segments(marks)
        stage = self._stage_of(words, seg)  # [NW] 0..3, or 4 outside every stage
        slot = words.row * 5 + stage  # [NW] (row, stage) bucket
        content_word = (words.length >= 2) & (words.flags & STOP == 0)
        lexicon, mental = words.flags & LEXICON > 0, words.flags & MENTAL > 0
        per_stage = _per_stage(slot, torch.stack([content_word, content_word & lexicon, mental], 1), B)  # [B, 4, 3]
        structure, good = self._structure(counts, firsts, per_stage[..., 0])
        ngrams = {n: self._ngrams(words, n) for n in {self.config.rep_ngram, self.config.copy_ngram}}
        content = self._content(
            words, stage, slot, content_word & ~lexicon, per_stage, good, feats, items, chosen,
            ngrams[self.config.copy_ngram],
        )
        return Parts(
            format=self._format(text, marks, chosen).double(),
            accuracy=(chosen == feats.gold[items]).double(),
            structure=structure,
            content=content,
            length=self._length(mask.sum(1)) * self._repetition(words, B, *ngrams[self.config.rep_ngram]),
            segments=seg,
            good=good,
        )

    def to_device(self, device: torch.device) -> None:
        if device != self._device:
            for name in self._device_tensors:
                setattr(self, name, getattr(self, name).to(device))
            self._device = device

    # ------------------------------------------------------------------ bytes, markers, words

    def flatten(self, ids: Tensor, mask: Tensor) -> Flat:
        vocab = len(self.token_table) - 2
        ids = torch.where(mask & (ids >= 0) & (ids < vocab), ids, vocab)  # pads, unknown ids: empty
        ids = torch.cat([torch.full_like(ids[:, :1], vocab + 1), ids], 1)  # the prefix starts every row
        B, T = ids.shape
        sep = torch.ones(B, 1, dtype=torch.long, device=ids.device)  # start 0, length 1: the NUL separator
        tok = torch.cat([self.token_table.index_select(0, ids.flatten()).view(B, T), sep], 1).flatten()  # [B * (T + 1)]
        lens, src = tok & 0xFFFF, tok >> 16
        ends = lens.cumsum(0)
        starts = ends - lens
        N = int(ends[-1])
        if N > 2**26:  # keeps the word-hash prefix sums (code < 37, powers < 2**31) below 2**63
            raise ValueError(f"{N} bytes in one batch: score it in smaller pieces")
        # byte i of the stream is vocab_packed[i + base[t]] for its token t: integrate steps of 1
        # per byte plus the jumps of base at token starts (empty tokens' jumps add up)
        base = src - starts
        index = torch.ones(N, dtype=torch.long, device=ids.device)
        index[0] = 0
        index.index_add_(0, starts, torch.diff(base, prepend=base.new_zeros(1)))
        packed = self.vocab_packed.index_select(0, torch.cumsum(index, 0, out=index))  # [N]
        end = ends.view(B, T + 1)[:, -1] - 1
        row_len = lens.view(B, T + 1)[:, :-1].sum(1)
        lead, code, wide = decode_utf8(packed & 255, self.utf8)
        nonblank = (packed >> NONBLANK_SHIFT) & 1  # [N] 0 on ASCII spaces; other spaces (2 or 3 bytes) below
        space = wide[torch.isin(code.index_select(0, wide), self.spaces)]
        three = space[code.index_select(0, space) >= 0x800]
        nonblank.index_put_((torch.cat([space, space + 1, three + 2]),), nonblank.new_zeros(1))
        return Flat(packed, end - row_len, end, _prefix_sum(nonblank), lead, code)

    def markers(self, text: Flat) -> Markers:
        B, M, Lm = len(text.start), len(self.marker_len), int(self.marker_len.max())
        cand = torch.nonzero(text.packed >= MARKER_BIT).squeeze(1)  # [K] bytes that may start a marker
        window = _chunks(text.bytes_at(cand[:, None] + torch.arange(Lm, device=cand.device)))  # [K, C]
        row = text.row_of(cand)
        hit = ((window[:, None, :] & self.marker_mask) == self.marker_chunks).all(-1)  # [K, 8]
        hit &= cand[:, None] + self.marker_len <= text.end[row, None]
        region_end = text.end.scatter_reduce(0, row[hit[:, 1]], cand[hit[:, 1]], "amin")
        hit[:, 4:] &= cand[:, None] + self.marker_len[4:] <= region_end[row, None]
        slot = (row[:, None] * M + torch.arange(M, device=cand.device))[hit]
        count = torch.bincount(slot, minlength=B * M).view(B, M)
        first = (
            text.end.repeat_interleave(M).scatter_reduce(0, slot, cand[:, None].expand(-1, M)[hit], "amin").view(B, M)
        )
        return Markers(count, first, region_end, cand[hit[:, 4:].any(1)], cand, row, hit)

    def _words(self, text: Flat) -> _Words:
        N = len(text.packed)
        code = (text.packed >> CODE_SHIFT).bitwise_and_(63)  # [N] 0 outside words
        edges = torch.nonzero(torch.diff(code > 0, prepend=code.new_zeros(1, dtype=torch.bool))).squeeze(1)
        first, stop = edges[0::2].contiguous(), edges[1::2].contiguous()  # alternate; the stream ends with a separator
        prefix = _prefix_sum(code.mul_(self.powers(CHAR_BASE, N, code.device)))  # [N + 1] sum of code * BASE**pos
        shifted = (prefix.index_select(0, stop) - prefix.index_select(0, first)) % HASH_MOD  # = key * BASE**first
        key = shifted * self.powers(_inverse(CHAR_BASE), N, code.device).index_select(0, first) % HASH_MOD
        entry = self.word_table.index_select(0, key & (len(self.word_table) - 1))
        flags = torch.where(entry >> 3 == key, entry & 7, 0)
        return _Words(key, first, stop - first, text.row_of(first), flags)

    # ------------------------------------------------------------------ components

    def _choice(self, text: Flat, marks: Markers, n_options: Tensor) -> Tensor:
        """[B] chosen option index, -1 unless exactly one answer pair holds exactly one valid letter."""
        a, b = marks.first[:, 2] + self.marker_len[2], marks.first[:, 3]  # payload [a, b)
        ok = (marks.count[:, 2] == 1) & (marks.count[:, 3] == 1) & (a <= b)
        a, b = torch.where(ok, a, 0), torch.where(ok, b, 0)
        ns = text.n_nonblank
        letter = text.bytes_at(torch.searchsorted(ns, ns[a] + 1) - 1) - ord("A")  # first non-blank byte at or after a
        ok &= (ns[b] - ns[a] == 1) & (letter >= 0) & (letter < n_options)
        return torch.where(ok, letter, -1)

    def _format(self, text: Flat, marks: Markers, chosen: Tensor) -> Tensor:
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

    def _segments(self, marks: Markers) -> tuple[Tensor, Tensor, Tensor]:
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
        """[NW] stage whose segment holds each word's start, 4 for none. Segments are disjoint and
        those of present stages start at distinct positions, so the only candidate is the one with
        the last start at or before the word's (a sentinel segment [-1, -1) comes first)."""
        never = seg.new_full((1,), -1)
        begin, end = torch.cat([never, seg[..., 0].flatten()]), torch.cat([never, seg[..., 1].flatten()])
        label = torch.cat([never.new_full((1,), 4), torch.arange(seg.shape[0] * 4, device=seg.device) & 3])
        begin, order = begin.sort()
        cand = order.index_select(0, torch.searchsorted(begin, words.start, right=True) - 1)
        return torch.where(words.start < end.index_select(0, cand), label.index_select(0, cand), 4)

    def _structure(self, counts: Tensor, firsts: Tensor, n_content: Tensor) -> tuple[Tensor, Tensor]:
        """[B] structure score and [B, 4] good stages (present with enough content words)."""
        n = counts.shape[1]
        good = (counts > 0) & (n_content >= self.config.min_stage_words)
        both = (
            (counts[:, :, None] > 0) & (counts[:, None, :] > 0) & (firsts[:, :, None] < firsts[:, None, :])
        )  # [B, 4, 4]
        ordered = torch.triu(both, diagonal=1).sum((1, 2))
        extra = (counts - 1).clamp(min=0).sum(1)
        raw = 0.5 * good.double().mean(1) + 0.5 * ordered.double() / (n * (n - 1) / 2)
        return raw * (1.0 - self.config.stage_repeat_penalty * extra.double()).clamp(min=0.0), good

    def _content(
        self,
        words: _Words,
        stage: Tensor,
        slot: Tensor,
        unknown: Tensor,
        per_stage: Tensor,
        good: Tensor,
        feats: ItemFeatures,
        items: Tensor,
        chosen: Tensor,
        ngrams: tuple[Tensor, Tensor],
    ) -> Tensor:
        """per_stage [B, 4, 3]: content words, those in the lexicon, mental-state words; unknown
        [NW]: content words outside the lexicon, to look up in the item's story/question/options."""
        B, cfg = len(items), self.config
        checked = torch.nonzero(unknown & (stage < 4)).squeeze(1)
        in_context = _member(
            feats.context[items], words.row.index_select(0, checked), words.key.index_select(0, checked)
        )
        grounded = per_stage[..., 1] + _per_stage(slot.index_select(0, checked), in_context[:, None], B)[..., 0]
        option = feats.options[items, chosen.clamp(min=0)]  # [B, O]
        entities, question, support = _coverage(
            words, stage, (feats.entities[items], feats.question[items], option), (0, 2, 3)
        )
        mental = (per_stage[:, 1, 2] / cfg.mental_target).clamp(max=1.0)
        term = torch.stack([entities, mental, question, torch.where(chosen >= 0, support, 0.0)], 1)  # [B, 4]
        g, precision = cfg.grounding_weight, grounded / per_stage[..., 0].clamp(min=1)
        copied = self._copied(words, stage, feats.story_ngrams[items], *ngrams)
        return (good * (g * precision + (1 - g) * term) * _tolerance(copied, cfg.copy_tolerance)).mean(1)

    def _ngrams(self, words: _Words, n: int) -> tuple[Tensor, Tensor]:
        """Keys [m] (m = NW - n + 1) of the runs of n consecutive words from each word on, and
        whether each run lies within one row; from prefix sums of key * NGRAM_BASE**position."""
        NW, device = len(words.key), words.key.device
        m = max(NW - n + 1, 0)
        prefix = _prefix_sum(words.key * self.powers(NGRAM_BASE, NW, device) % HASH_MOD)  # [NW + 1]
        shifted = (prefix[n : n + m] - prefix[:m]) % HASH_MOD  # = key * NGRAM_BASE**first
        key = shifted * self.powers(_inverse(NGRAM_BASE), m, device) % HASH_MOD
        return key, words.row[:m] == words.row[n - 1 : n - 1 + m]

    def _copied(self, words: _Words, stage: Tensor, story_ngrams: Tensor, key: Tensor, valid: Tensor) -> Tensor:
        """[B, 4] share of each stage's word n-grams found verbatim in the item's story (0 if none)."""
        n, B, m = self.config.copy_ngram, len(story_ngrams), len(key)
        where = stage[:m]
        inside = torch.nonzero(valid & (where < 4) & (where == stage[n - 1 : n - 1 + m])).squeeze(1)
        row = words.row.index_select(0, inside)
        hit = _member(story_ngrams, row, key.index_select(0, inside))
        counts = _per_stage(row * 5 + where.index_select(0, inside), torch.stack([hit, torch.ones_like(hit)], 1), B)
        return counts[..., 0] / counts[..., 1].clamp(min=1)

    def _repetition(self, words: _Words, B: int, key: Tensor, valid: Tensor) -> Tensor:
        """[B] repetition factor from the share of each row's word n-grams that repeat an earlier one."""
        m, device = len(key), key.device
        row = words.row[:m]
        unique = -1 - torch.arange(m, device=device)  # runs across rows: distinct negative keys, never repeats
        combined = torch.where(valid, row << KEY_BITS | key, unique).sort().values
        repeated = torch.zeros(B, dtype=torch.long, device=device)
        repeated.index_add_(0, (combined[1:] >> KEY_BITS).clamp(min=0), (combined[1:] == combined[:-1]).long())
        total = torch.zeros(B, dtype=torch.long, device=device).index_add_(0, row, valid.long())
        return _tolerance(repeated / total.clamp(min=1), self.config.rep_tolerance)

    def powers(self, base: int, n: int, device: torch.device) -> Tensor:
        """[n] base**j mod HASH_MOD, from a cache grown by doubling."""
        have = self._powers.get(base)
        if have is None or len(have) < n or have.device != device:
            self._powers[base] = have = _mod_powers(base, 2 * n + 1).to(device)
        return have[:n]

    def _length(self, n_tokens: Tensor) -> Tensor:
        cfg = self.config
        width, k, L = cfg.len_max - cfg.len_min, cfg.len_sharpness, n_tokens.double()
        return torch.sigmoid(k * (L - cfg.len_min) / width) * (1 - torch.sigmoid(k * (L - cfg.len_max) / width))

def _per_stage(slot: Tensor, flags: Tensor, B: int) -> Tensor:
    """[B, 4, k] how many of the words (or n-grams) in buckets slot [n] = row * 5 + stage (4: no
    stage) have each of flags [n, k] set."""
    sums = torch.zeros(B * 5, flags.shape[1], dtype=torch.long, device=slot.device)
    return sums.index_add_(0, slot, flags.long()).view(B, 5, -1)[:, :4]


def _coverage(words: _Words, stage: Tensor, targets: tuple[Tensor, ...], stages: tuple[int, ...]) -> tuple[Tensor, ...]:
    """Per target set [B, S_i] (padded with HASH_MOD): [B] share of its keys among the words of
    stages[i] in the same row, 1 if it has none; all sets in one lookup."""
    B, device = len(targets[0]), stage.device
    tagged = torch.cat(
        [(torch.arange(B, device=device)[:, None] * 4 + k) << KEY_BITS | t for t, k in zip(targets, stages)], 1
    )  # [B, S]
    valid = torch.cat(targets, 1) != HASH_MOD
    where = torch.nonzero(valid.flatten()).squeeze(1)  # the distinct keys among tagged
    inside = torch.nonzero(sum(stage == k for k in stages)).squeeze(1)
    query = (
        words.row.index_select(0, inside) * 4 + stage.index_select(0, inside)
    ) << KEY_BITS | words.key.index_select(0, inside)
    at = _KeyIndex(tagged.flatten()[where]).find(query)
    found = torch.zeros(tagged.numel() + 1, dtype=torch.bool, device=device)
    found[torch.cat([where, where.new_full((1,), tagged.numel())])[at]] = True  # misses (-1): the spare last entry
    found = found[:-1].view(B, -1)
    sizes = [t.shape[1] for t in targets]
    return tuple(
        torch.where(v.any(1), f.sum(1) / v.sum(1).clamp(min=1), 1.0)
        for f, v in zip(found.split(sizes, 1), valid.split(sizes, 1))
    )


class _KeyIndex:
    """Exact lookup of distinct int64 keys: open addressing with linear probing, built and probed
    in vectorized rounds (round r tries slot home + r); faster than sorted search on CPU."""

    def __init__(self, keys: Tensor):
        bits = max(8, len(keys).bit_length() + 3)  # load factor <= 1/8
        self.mask = (1 << bits) - 1
        self.pos = torch.full((1 << bits,), -1, dtype=torch.long, device=keys.device)  # slot -> index into keys
        home, pending, self.rounds = self._home(keys), torch.arange(len(keys), device=keys.device), 0
        while len(pending):
            slot = (home[pending] + self.rounds) & self.mask
            free = self.pos[slot] < 0
            self.pos[slot[free]] = pending[free]  # among claimants of one slot, one wins
            pending = pending[self.pos[slot] != pending]
            self.rounds += 1
        self.slot_key = torch.cat([keys, keys.new_full((1,), -1)])[self.pos]  # empty slots (-1): the -1 appended

    def _home(self, keys: Tensor) -> Tensor:
        return (keys ^ (keys >> KEY_BITS) * 0x9E3779B1) & self.mask  # mixes the row bits into the key bits

    def find(self, query: Tensor) -> Tensor:
        """[n] index of each query [n] among the keys, -1 if absent. A probe stops at its key or at
        an empty slot: insertion filled every slot between a key's home and its own."""
        out, active, slot = torch.full_like(query, -1), torch.arange(len(query), device=query.device), self._home(query)
        for _ in range(self.rounds):
            pos = self.pos.index_select(0, slot)
            hit = self.slot_key.index_select(0, slot) == query
            out.index_put_((active[hit],), pos[hit])
            going = torch.nonzero((pos >= 0) & ~hit).squeeze(1)
            if not len(going):
                break
            active, query, slot = active[going], query[going], (slot[going] + 1) & self.mask
        return out


def _prefix_sum(x: Tensor) -> Tensor:
    """[n + 1] sums of x [n] before each position."""
    out = torch.zeros(len(x) + 1, dtype=torch.long, device=x.device)
    torch.cumsum(x, 0, out=out[1:])
    return out


def _chunks(b: Tensor) -> Tensor:
    """Bytes [..., L] as little-endian 7-byte integers [..., ceil(L / 7)], for fewer comparisons."""
    b = torch.nn.functional.pad(b, (0, -b.shape[-1] % 7)).unflatten(-1, (-1, 7))
    return (b << torch.arange(0, 56, 8, device=b.device)).sum(-1)


def _tolerance(frac: Tensor, tolerance: float) -> Tensor:
    return ((1.0 - frac) / (1.0 - tolerance)).clamp(0.0, 1.0)


def _member(sets: Tensor, row: Tensor, key: Tensor) -> Tensor:
    """[n] whether key [n] is in row `row` [n] of sets [B, S] (padded with HASH_MOD)."""
    tagged = torch.arange(len(sets), device=sets.device)[:, None] << KEY_BITS | sets
    return _KeyIndex(tagged[sets != HASH_MOD]).find(row << KEY_BITS | key) >= 0


def sip_tau(step: int, total_steps: int, config: RewardConfig) -> float:
    """Weight of the process terms at `step`: 0 until curriculum_start (a fraction of training),
    then linear to 1 at curriculum_end (a step function when the two coincide)."""
    progress = step / max(total_steps, 1)
    span = config.curriculum_end - config.curriculum_start
    if span <= 0:
        return 1.0 if progress >= config.curriculum_start else 0.0
    return min(1.0, max(0.0, (progress - config.curriculum_start) / span))


def sip_total(parts: dict[str, Tensor], tau: float, config: RewardConfig) -> Tensor:
    """[B] the sip formula's total from the [B] components."""
    process = tau * (config.w_structure * parts["structure"] + config.w_content * parts["content"])
    if config.mode == "multiplicative":
        return parts["format"] * (config.w_accuracy * parts["accuracy"] + process) * parts["length"]
    return (
        config.w_format * parts["format"] + config.w_accuracy * parts["accuracy"] + process
        + config.w_length * parts["length"]
    )

"""Social-R1's published reward, vectorized on the byte stream of `LexicalScorer.flatten`.

For a completion decoded as Python decodes it (special tokens dropped; UTF-8 with errors="replace";
whitespace, `\\s` and stripping as Python's `re` and `str.strip()` see them):
- F = 1 when the whole text matches ^<think>(.*?)</think>(.*?)<Answer>(.*?)</Answer>$ (DOTALL; `$`
  also matches before one final newline), else 0;
- EM: the letter of the first <Answer>\\s*([A-Z])[\\s\\S]*?</Answer> match equals the gold one;
- T: the text of the first <think>(.*?)</think> match, stripped; L: its length in characters
  (code points; an invalid UTF-8 sequence is one U+FFFD);
- lp = sigmoid((L - 400) / 50) * sigmoid((3000 - L) / 50); rho: share of repeated character
  16-grams of T; rp = exp(-8 (rho - 0.1)) when rho > 0.1, else 1;
- R = F^3 * (EM + tau * (w_s * S + w_c * adj)) * lp * rp, tau = 1 if EM else 0.2,
  adj = max(0, C + 2) ** 1.2, w_s = 2 - p, w_c = 1 + 2p, p = min(1, global_step / 200) where the
  first update is global step 1 (verl's count; the trainer's step is 0-based: global = step + 1);
  R = 0 when F < 0.1, else max(0.01, R). A structure or content score that failed counts 0.
(constants: SocialR1Config). tests/rewards_reference.py holds the same definition per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from socialr1.rewards.config import SocialR1Config
from socialr1.rewards.constants import HASH_MOD
from socialr1.rewards.lexical import Flat, LexicalScorer, Markers

Tensor = torch.Tensor
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = range(4)  # marker rows of Markers.hit
GRAM_BASES = (1_114_119, 1_114_157)  # two polynomial hashes of a character n-gram's code points (> any code point + 1)
NONE = torch.iinfo(torch.int64).max


@dataclass
class Think:
    """The stripped text T of each row's first think block, as a byte range of the stream."""

    start: Tensor  # [B]
    end: Tensor  # [B] (= start when there is none)
    chars: Tensor  # [B] L: characters of the decoded text in [start, end)


def _occurrences(marks: Markers, m: int) -> tuple[Tensor, Tensor]:
    """Start positions [k] of marker m, in text order, and their rows [k]."""
    sel = marks.hit[:, m]
    return marks.pos[sel], marks.row[sel]


def _first_at_or_after(pos: Tensor, row: Tensor, lo: Tensor, none: Tensor) -> Tensor:
    """[B] first of pos [k] (rows row [k]) that is >= lo [B] of its row; `none` where there is none."""
    ok = pos >= lo[row]
    return none.clone().scatter_reduce(0, row[ok], pos[ok], "amin")


def think_text(scorer: LexicalScorer, text: Flat, marks: Markers) -> Think:
    L = scorer.marker_len
    ns, end = text.n_nonblank, text.end
    after_open = (marks.first[:, THINK_OPEN] + L[THINK_OPEN]).clamp(max=len(ns) - 1)
    close = _first_at_or_after(*_occurrences(marks, THINK_CLOSE), after_open, end)  # [B], = end when none
    inner = torch.where(close < end, after_open, close)  # [inner, close): T before stripping
    has = ns[close] > ns[inner]
    a = torch.where(has, torch.searchsorted(ns, ns[inner] + 1) - 1, close)  # first non-blank byte
    b = torch.where(has, torch.searchsorted(ns, ns[close]), close)  # one past the last
    starts = torch.nn.functional.pad(text.lead.long().cumsum(0), (1, 0))  # [N + 1] characters before each byte
    return Think(a, b, starts[b] - starts[a])


def format_score(scorer: LexicalScorer, text: Flat, marks: Markers) -> Tensor:
    """[B] F in {0, 1}: opens with the think marker, ends with the answer close (then at most one
    newline), and has a think close, then an answer open before that final answer close."""
    L, start, end = scorer.marker_len, text.start, text.end
    cpos, crow = _occurrences(marks, ANSWER_CLOSE)
    tail = cpos + L[ANSWER_CLOSE]
    at_end = (tail == end[crow]) | ((tail == end[crow] - 1) & (text.bytes_at(end[crow] - 1) == ord("\n")))
    last_close = torch.full_like(end, -1).scatter_reduce(0, crow[at_end], cpos[at_end], "amax")  # [B], -1: none
    think_close = _first_at_or_after(*_occurrences(marks, THINK_CLOSE), start + L[THINK_OPEN], end)
    opos, orow = _occurrences(marks, ANSWER_OPEN)
    fits = (opos >= think_close[orow] + L[THINK_CLOSE]) & (opos + L[ANSWER_OPEN] <= last_close[orow])
    answer_between = torch.zeros_like(end).scatter_reduce(0, orow, fits.long(), "amax") > 0
    opens = (marks.count[:, THINK_OPEN] > 0) & (marks.first[:, THINK_OPEN] == start)
    return opens & (last_close >= 0) & (think_close < end) & answer_between


def chosen_letter(scorer: LexicalScorer, text: Flat, marks: Markers) -> Tensor:
    """[B] letter index (A = 0) of the first answer open followed by blanks, a capital letter, and
    later an answer close; -1 where there is none."""
    ns, end = text.n_nonblank, text.end
    opos, orow = _occurrences(marks, ANSWER_OPEN)
    cpos, crow = _occurrences(marks, ANSWER_CLOSE)
    last_close = torch.full_like(end, -1).scatter_reduce(0, crow, cpos, "amax")
    after = (opos + scorer.marker_len[ANSWER_OPEN]).clamp(max=len(ns) - 1)
    q = torch.searchsorted(ns, ns[after] + 1) - 1  # first non-blank byte at or after the marker
    letter = text.bytes_at(q) - ord("A")
    ok = (letter >= 0) & (letter < 26) & (q < end[orow]) & (last_close[orow] > q)
    first = torch.full_like(end, NONE).scatter_reduce(0, orow[ok], opos[ok] * 32 + letter[ok], "amin")
    return torch.where(first < NONE, first % 32, -1)


def repeated_share(scorer: LexicalScorer, text: Flat, think: Think, n: int) -> Tensor:
    """[B] rho: (count - distinct) / count of the character n-grams of T (0 when L < n): runs of n
    consecutive code points of the decoded text."""
    B, N, device = len(think.start), len(text.packed), text.packed.device
    edge = torch.zeros(N + 1, dtype=torch.long, device=device)
    edge.index_add_(0, think.start, torch.ones_like(think.start)).index_add_(0, think.end, -torch.ones_like(think.end))
    inside = edge.cumsum(0)[:N] > 0
    pos = torch.nonzero(inside & text.lead).squeeze(1)  # [K] the characters of every row's T, in order
    row = text.row_of(pos)
    first = think.chars.cumsum(0) - think.chars  # [B] index into pos of each row's first character
    local = torch.arange(len(pos), device=device) - first[row]
    gram = torch.nonzero(local + n <= think.chars[row]).squeeze(1)  # [G] n-grams that fit, by first character
    code = text.code[pos]
    keys = [_run_hash(scorer, code, base, gram, n) for base in GRAM_BASES]
    distinct = torch.unique(torch.stack([row[gram], *keys], 1), dim=0)[:, 0].bincount(minlength=B)
    count = (think.chars - n + 1).clamp(min=0)
    return torch.where(count > 0, (count - distinct) / count.clamp(min=1), 0.0).double()


def _run_hash(scorer: LexicalScorer, code: Tensor, base: int, begin: Tensor, n: int) -> Tensor:
    """[G] sum over j < n of (code[begin + j] + 1) * base**j mod HASH_MOD, for code points code [K]."""
    K, device = len(code), code.device
    terms = (code + 1) * scorer.powers(base, K, device) % HASH_MOD  # (code + 1) < 2**21, powers < 2**31
    prefix = torch.nn.functional.pad(terms.cumsum(0), (1, 0))  # < K * 2**31 < 2**57
    shifted = (prefix[begin + n] - prefix[begin]) % HASH_MOD
    return shifted * scorer.powers(pow(base, HASH_MOD - 2, HASH_MOD), K, device)[begin] % HASH_MOD


def weights(step: int, cfg: SocialR1Config) -> tuple[float, float]:
    """(w_s, w_c) of the structure-to-content curriculum at the trainer's 0-based `step`. The
    paper's code (verl) counts its first update as global step 1, so p = (step + 1) / 200 here."""
    p = min(1.0, (step + 1) / cfg.curriculum_steps)
    return (
        cfg.w_structure_start + (cfg.w_structure_end - cfg.w_structure_start) * p,
        cfg.w_content_start + (cfg.w_content_end - cfg.w_content_start) * p,
    )


def combine(
    fmt: Tensor, em: Tensor, structure: Tensor, content: Tensor, structure_ok: Tensor, content_ok: Tensor,
    lp: Tensor, rp: Tensor, step: int, cfg: SocialR1Config,
) -> dict[str, Tensor]:
    """Every output component [B] (float64) from F, EM, S, C [B], whether S and C exist [B], lp, rp."""
    w_s, w_c = weights(step, cfg)
    tau = torch.where(em > 0, 1.0, cfg.tau_wrong).double()
    adj = torch.where(content_ok, (content + cfg.content_shift).clamp(min=0) ** cfg.content_power, 0.0)
    process = tau * (w_s * torch.where(structure_ok, structure, 0.0) + w_c * adj)
    total = fmt**cfg.format_power * (em + process) * lp * rp
    total = torch.where(fmt < cfg.format_gate, 0.0, total.clamp(min=cfg.floor))
    full = torch.ones_like(total)
    return {
        "total": total, "format": fmt, "accuracy": em, "structure": structure, "content": content,
        "length": lp * rp, "tau": tau, "adj": adj, "lp": lp, "rp": rp, "w_s": w_s * full, "w_c": w_c * full,
    }


def length_factors(scorer: LexicalScorer, text: Flat, think: Think, cfg: SocialR1Config) -> tuple[Tensor, Tensor]:
    """[B] lp (window on L) and rp (repetition of T's character n-grams)."""
    L = think.chars.double()
    lp = torch.sigmoid((L - cfg.len_low) / cfg.len_softness) * torch.sigmoid((cfg.len_high - L) / cfg.len_softness)
    rho = repeated_share(scorer, text, think, cfg.rep_n)
    rp = torch.where(rho > cfg.rep_threshold, torch.exp(-cfg.rep_slope * (rho - cfg.rep_threshold)), 1.0)
    return lp, rp

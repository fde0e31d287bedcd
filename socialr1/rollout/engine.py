"""The rollout engine: completions from a Hugging Face decoder-only model with our own decode loop.

- Each distinct prompt is prefilled once, and its keys/values are stored once for its G rows: the
  decode attention (group_attention) reads a prompt's KV once for the whole group and each row's own
  generated KV, under one softmax. Prompt KV memory and reads are 1/G of a G-copies cache.
- The KV cache is static: prompt part [P, kv_heads, Wp, D], generated part [P * G, kv_heads, Lg, D]
  per layer, Wp and Lg rounded up to multiples of `bucket` so shapes repeat across batches. Eager
  decode steps read the generated columns written so far only (cost grows with the current length,
  not the bucket); compiled steps read the whole bucket under a mask, so each bucket is one graph.
- No host synchronisation per token: tokens are chosen on the device (sampling.choose) and finished
  rows are read by the host every `check_every` steps, when stop strings are looked for too.
- Dropping finished rows: a prompt's G rows leave the decode batch together, once all have finished
  (a group shares its prompt KV). At a check, when at most half of the groups in the batch are
  still running, the finished groups leave it. Halving bounds the cache copies to log2(prompts) per
  rollout while the per-step cost follows the running groups. With G = 1 (evaluation) this drops
  single rows. Compiled steps keep static shapes and never drop.
- Layers are called without module hooks: under FSDP2 the caller holds the weights gathered for the
  whole rollout (distributed.gathered), so decoding does no collective and no hook work."""

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import AttentionInterface, PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import decoder
from socialr1.models import attention
from socialr1.rollout.batch import Rollout, pad_left, stop_mask
from socialr1.rollout.sampling import SamplingParams, choose, token_logprobs

BUCKET = 128  # cache length granularity (tokens)
MAX_GRAPHS = 8  # compiled decode steps kept; further shapes decode eagerly (torch._dynamo's default cache limit)
GROUP_ATTENTION = "socialr1_group"


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class GroupKV:
    """Static KV cache behind HF's `Cache.update` interface. Prefilling, `update` stores the
    prompts' states right-aligned in the prompt part; decoding, it writes one generated column
    (`column`) of every row. group_attention reads both parts."""

    def __init__(self, lm: PreTrainedModel, prompts: int, group: int, prompt_width: int, gen_width: int,
                 dtype: torch.dtype, device: torch.device):
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        layers, heads = len(lm.model.layers), cfg.num_key_value_heads
        self.prompt_keys = [torch.zeros(prompts, heads, prompt_width, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.prompt_values = [torch.zeros_like(k) for k in self.prompt_keys]
        self.keys = [torch.zeros(prompts * group, heads, gen_width, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.group, self.prefilling = group, False
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # where the decode step writes
        self.live: int | None = None  # generated columns attention reads; None: the whole bucket (compiled)

    @property
    def length(self) -> int:
        return self.prompt_keys[0].shape[2] + self.keys[0].shape[2]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefilling:
            width = key.shape[2]
            self.prompt_keys[layer_idx][:, :, -width:] = key
            self.prompt_values[layer_idx][:, :, -width:] = value
        else:
            self.keys[layer_idx].index_copy_(2, self.column, key)
            self.values[layer_idx].index_copy_(2, self.column, value)
        return key, value

    def keep(self, groups: torch.Tensor) -> torch.Tensor:
        """Keep these prompts (and their rows); returns the kept rows' indices."""
        rows = (groups[:, None] * self.group + torch.arange(self.group, device=groups.device)).flatten()
        self.prompt_keys = [k.index_select(0, groups) for k in self.prompt_keys]
        self.prompt_values = [v.index_select(0, groups) for v in self.prompt_values]
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        return rows


def group_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [N, H, 1, D], N = P * G rows, a prompt's rows adjacent
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    group_kv: GroupKV | None = None,
    prompt_bias: torch.Tensor | None = None,  # [P, 1, 1, Wp] float: 0 on prompt tokens, -inf on padding
    gen_bias: torch.Tensor | None = None,  # [1, 1, 1, Lg] float: -inf on columns not yet written; None: all written
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """One decode step's attention over GroupKV: the G queries of a prompt meet its keys in one
    matmul (the prompt KV is read once per group), each row meets its own generated keys, and both
    score sets share one softmax. Returns [N, 1, H, D] as HF's attention functions do."""
    layer = module.layer_idx
    pk, pv = group_kv.prompt_keys[layer], group_kv.prompt_values[layer]  # [P, kv, Wp, D]
    live = group_kv.live or group_kv.keys[layer].shape[2]
    gk, gv = group_kv.keys[layer][:, :, :live], group_kv.values[layer][:, :, :live]  # [N, kv, Lg', D]
    n, heads, _, d = query.shape
    p, kv = pk.shape[:2]
    g, rep = n // p, heads // kv

    def by_group(x: torch.Tensor) -> torch.Tensor:  # [N, kv, rep, X] -> [P, kv, G * rep, X]
        return x.reshape(p, g, kv, rep, -1).transpose(1, 2).reshape(p, kv, g * rep, -1)

    def by_row(x: torch.Tensor) -> torch.Tensor:  # [P, kv, G * rep, X] -> [N, kv, rep, X]
        return x.reshape(p, kv, g, rep, -1).transpose(1, 2).reshape(n, kv, rep, -1)

    q = query.reshape(n, kv, rep, d)
    prompt_scores = (by_group(q) @ pk.transpose(-1, -2)).float() * scaling + prompt_bias  # [P, kv, G * rep, Wp]
    gen_scores = (q @ gk.transpose(-1, -2)).float() * scaling  # [N, kv, rep, Lg']
    if gen_bias is not None:
        gen_scores = gen_scores + gen_bias
    top = torch.maximum(by_row(prompt_scores.amax(-1, keepdim=True)), gen_scores.amax(-1, keepdim=True))  # [N, kv, rep, 1]
    prompt_w, gen_w = (prompt_scores - by_group(top)).exp(), (gen_scores - top).exp()
    total = by_row(prompt_w.sum(-1, keepdim=True)) + gen_w.sum(-1, keepdim=True)
    out = by_row((prompt_w.to(pv.dtype) @ pv).float()) + (gen_w.to(gv.dtype) @ gv).float()  # [N, kv, rep, D]
    return (out / total).to(query.dtype).reshape(n, 1, heads, d), None


AttentionInterface.register(GROUP_ATTENTION, group_attention)


def decode_step(
    lm: PreTrainedModel,
    cache: GroupKV,
    tokens: torch.Tensor,  # [N] the tokens just chosen
    positions: torch.Tensor,  # [N] their position ids
    prompt_bias: torch.Tensor,  # [P, 1, 1, Wp]
) -> torch.Tensor:
    """One token per row through the model -> next-token logits [N, V] (float32)."""
    gen_bias = None  # eager steps read exactly the columns written so far
    if cache.live is None:
        cols = torch.arange(cache.keys[0].shape[2], device=tokens.device)
        gen_bias = torch.zeros(cols.shape, device=tokens.device).masked_fill(cols > cache.column, float("-inf"))[None, None, None]
    h = decoder.forward(lm, tokens[:, None], positions[:, None], None, cache, hooks=False,
                        group_kv=cache, prompt_bias=prompt_bias, gen_bias=gen_bias)
    return lm.lm_head(h[:, 0]).float()


class StopStrings:
    """Host-side search for stop strings in each row's decoded text, token piece by token piece."""

    def __init__(self, strings: Sequence[str], tokenizer: PreTrainedTokenizerBase, rows: int):
        self.strings, self.tokenizer = tuple(strings), tokenizer
        self.longest = max(map(len, self.strings))
        self.text = [""] * rows
        self.ends: list[list[int]] = [[] for _ in range(rows)]  # text length after each token
        self.pieces: dict[int, str] = {}

    def feed(self, row: int, tokens: list[int]) -> int | None:
        """Append a row's next tokens; the index of the token that completes a stop string, if any."""
        start = max(len(self.text[row]) - self.longest + 1, 0)
        for t in tokens:
            if t not in self.pieces:
                self.pieces[t] = self.tokenizer.decode([t])
            self.text[row] += self.pieces[t]
            self.ends[row].append(len(self.text[row]))
        found = [i + len(s) for s in self.strings if (i := self.text[row].find(s, start)) >= 0]
        return bisect.bisect_left(self.ends[row], min(found)) if found else None


@dataclass
class Completions:
    ids: torch.Tensor  # [N, C] pad_id after each row's end
    mask: torch.Tensor  # [N, C] 1 up to and including the token that ends the row
    logprobs: torch.Tensor | None  # [N, C] log-prob of each chosen token (0 after the end)


class Engine:
    """Holds the compiled decode steps across rollouts (one per batch size and cache bucket)."""

    def __init__(self, compile: bool = False, bucket: int = BUCKET, max_graphs: int = MAX_GRAPHS,
                 log: Callable[[str], None] = print):
        self.compile, self.bucket, self.max_graphs, self.log = compile, bucket, max_graphs, log
        self.graphs: set[tuple[int, int]] = set()
        self._compiled = torch.compile(decode_step, dynamic=False) if compile else None

    def _step(self, rows: int, length: int) -> Callable[..., torch.Tensor]:
        if self._compiled is None:
            return decode_step
        if (rows, length) not in self.graphs:
            if len(self.graphs) >= self.max_graphs:
                self.log(f"rollout: {self.max_graphs} decode graphs compiled already; batch {rows} x cache {length} decodes eagerly")
                return decode_step
            self.graphs.add((rows, length))
            self.log(f"rollout: compiling the decode step for batch {rows} x cache {length} (graph {len(self.graphs)} of at most {self.max_graphs})")
        return self._compiled

    @torch.no_grad()
    def generate(
        self,
        lm: PreTrainedModel,
        prompts: Sequence[Sequence[int]],
        group: int,
        params: SamplingParams,
        pad_id: int,
        generator: torch.Generator | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        with_logprobs: bool = False,
    ) -> Completions:
        """`group` completions per prompt, rows ordered prompt by prompt. `tokenizer` is needed only
        for stop strings."""
        decoder.check_supported(lm)
        if params.stop_strings and tokenizer is None:
            raise ValueError("stop strings need the tokenizer")
        device = lm.lm_head.weight.device
        ids, mask = (t.to(device) for t in pad_left(prompts, pad_id))
        width = ids.shape[1]
        cache = GroupKV(lm, len(prompts), group, round_up(width, self.bucket), round_up(params.max_new_tokens, self.bucket),
                        lm.model.embed_tokens.weight.dtype, device)
        with attention(lm, decoder.MASKED_ATTENTION):
            cache.prefilling = True
            h = decoder.forward(lm, ids, decoder.positions_of(mask), decoder.causal_padded(mask), cache, hooks=False)
            cache.prefilling = False
        logits = lm.lm_head(h[:, -1]).float().repeat_interleave(group, dim=0)  # [N, V]
        prompt_len = mask.sum(1)  # [P]
        with attention(lm, GROUP_ATTENTION):
            return self._decode(lm, cache, logits, prompt_len, params, pad_id, generator, tokenizer, with_logprobs)

    def _decode(self, lm, cache, logits, prompt_len, params, pad_id, generator, tokenizer, with_logprobs) -> Completions:
        n, steps, device, group = logits.shape[0], params.max_new_tokens, logits.device, cache.group
        out = torch.full((n, steps), pad_id, dtype=torch.long, device=device)
        logp = torch.zeros((n, steps), dtype=torch.float32, device=device) if with_logprobs else None
        stop_ids = torch.tensor(params.stop_ids, dtype=torch.long, device=device)
        strings = StopStrings(params.stop_strings, tokenizer, n) if params.stop_strings else None
        cut = [steps] * n  # per output row: columns kept because of stop strings
        rows = torch.arange(n, device=device)  # output row of each decode row
        prompt_width = cache.prompt_keys[0].shape[2]
        padding = torch.arange(prompt_width, device=device)[None] < (prompt_width - prompt_len)[:, None]  # [P, Wp]
        prompt_bias = torch.zeros(padding.shape, device=device).masked_fill(padding, float("-inf"))[:, None, None]
        positions = prompt_len.repeat_interleave(group)  # [N] position of the first new token
        done = torch.zeros(n, dtype=torch.bool, device=device)
        step = self._step(n, cache.length)
        checked = 0
        for i in range(steps):
            tokens = choose(logits, params, generator).masked_fill(done, pad_id)
            out[rows, i] = tokens
            if logp is not None:
                logp[rows, i] = token_logprobs(logits, tokens, params)
            done |= torch.isin(tokens, stop_ids)
            if i == steps - 1:
                break
            if (i + 1) % params.check_every == 0:
                if strings is not None:
                    self._find_strings(strings, out, rows, done, checked, i + 1, cut)
                    checked = i + 1
                finished = done.view(-1, group).all(1)  # [P'] groups whose rows have all finished
                running = int((~finished).sum())
                if running == 0:
                    break
                if self._compiled is None and 2 * running <= len(finished):
                    keep = cache.keep((~finished).nonzero().squeeze(1))
                    prompt_bias = prompt_bias[~finished]
                    rows, done, tokens, positions = (t[keep] for t in (rows, done, tokens, positions))
            cache.column.fill_(i)
            cache.live = None if self._compiled is not None else i + 1
            logits = step(lm, cache, tokens, positions + i, prompt_bias)
        used = i + 1
        if strings is not None:
            self._find_strings(strings, out, rows, done, checked, used, cut)
        out = out[:, :used]
        keep_cols = torch.arange(used, device=device)[None] < torch.tensor(cut, device=device)[:, None]
        final = stop_mask(out, params.stop_ids) * keep_cols if params.stop_ids else keep_cols.long()
        return Completions(
            out.masked_fill(final == 0, pad_id), final, None if logp is None else logp[:, :used] * final
        )

    @staticmethod
    def _find_strings(strings: StopStrings, out, rows, done, start: int, stop: int, cut: list[int]) -> None:
        """Feed columns [start, stop) of the decode rows to the stop-string search; a row that
        completes a string is done and keeps its columns up to that token."""
        for j, (row, tokens) in enumerate(zip(rows.tolist(), out[rows, start:stop].tolist())):
            if cut[row] < out.shape[1]:  # already ended by a string
                continue
            hit = strings.feed(row, tokens)
            if hit is not None:
                cut[row] = hit + 1
                done[j] = True


def sample(
    lm: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    item_index: Sequence[int],
    group: int,
    params: SamplingParams,
    pad_id: int,
    engine: Engine | None = None,
    generator: torch.Generator | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    with_logprobs: bool = False,
) -> Rollout:
    """`group` completions per prompt as a Rollout (a prompt's rows adjacent); greedy when
    params.temperature == 0."""
    c = (engine or Engine()).generate(lm, prompts, group, params, pad_id, generator, tokenizer, with_logprobs)
    device = c.ids.device
    prompt_ids, prompt_mask = (t.repeat_interleave(group, dim=0).to(device) for t in pad_left(prompts, pad_id))
    index = torch.tensor(list(item_index), device=device).repeat_interleave(group)
    return Rollout(prompt_ids, prompt_mask, c.ids, c.mask, index, c.logprobs)


def greedy(
    lm: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    item_index: Sequence[int],
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int],
) -> Rollout:
    """One greedy completion per prompt (evaluation)."""
    return sample(lm, prompts, item_index, 1, SamplingParams.for_eval(max_new_tokens, tuple(stop_ids)), pad_id)

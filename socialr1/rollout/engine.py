"""The rollout engine: completions from a Hugging Face decoder-only model with our own decode loop.

- Each distinct prompt is prefilled once; its KV is copied into its G rows of the cache.
- The KV cache is static: [rows, kv_heads, L, D] per layer, L rounded up to a multiple of `bucket`
  so shapes repeat across batches. Eager decode steps attend to the live columns only (cost grows
  with the current length, not the bucket); compiled steps read the whole bucket under a mask, so
  each bucket is one graph.
- No host synchronisation per token: tokens are chosen on the device (sampling.choose) and finished
  rows are read by the host every `check_every` steps, when stop strings are looked for too.
- Row dropping: at a check, when at most half of the decode batch is still running, the finished
  rows leave it (their KV rows with them). Halving bounds the cache copies to log2(rows) per
  rollout while the per-step cost follows the running rows. Compiled steps keep static shapes and
  never drop rows.
- Layers are called without module hooks: under FSDP2 the caller holds the weights gathered for the
  whole rollout (distributed.gathered), so decoding does no collective and no hook work."""

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from socialr1 import decoder
from socialr1.rollout.batch import Rollout, pad_left, stop_mask
from socialr1.rollout.sampling import SamplingParams, choose, token_logprobs

BUCKET = 128  # cache length granularity (tokens)
MAX_GRAPHS = 8  # compiled decode steps kept; further shapes decode eagerly (torch._dynamo's default cache limit)


class StaticKV:
    """Preallocated keys/values per layer, [rows, kv_heads, L, D], behind HF's `Cache.update`
    interface. Prompts sit left-padded in columns [0, W); decode step i writes column W + i."""

    def __init__(self, lm: PreTrainedModel, rows: int, length: int, dtype: torch.dtype, device: torch.device):
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (rows, cfg.num_key_value_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in lm.model.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in lm.model.layers]
        self.group = 0  # > 0 while prefilling: each prompt row is copied into `group` cache rows
        self.column = torch.zeros(1, dtype=torch.long, device=device)  # where the decode step writes
        self.live: int | None = None  # columns attention reads; None: the whole bucket (compiled)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.group:
            width = key.shape[2]
            self.keys[layer_idx][:, :, :width] = key.repeat_interleave(self.group, dim=0)
            self.values[layer_idx][:, :, :width] = value.repeat_interleave(self.group, dim=0)
            return key, value
        self.keys[layer_idx].index_copy_(2, self.column, key)
        self.values[layer_idx].index_copy_(2, self.column, value)
        live = self.live or self.length
        return self.keys[layer_idx][:, :, :live], self.values[layer_idx][:, :, :live]

    def keep(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def decode_step(
    lm: PreTrainedModel,
    cache: StaticKV,
    tokens: torch.Tensor,  # [B] the tokens just chosen
    positions: torch.Tensor,  # [B] their position ids
    first_key: torch.Tensor,  # [B] first non-padding cache column of each row
) -> torch.Tensor:
    """One token per row through the model -> next-token logits [B, V] (float32)."""
    keys = torch.arange(cache.live or cache.length, device=tokens.device)
    visible = (keys[None] >= first_key[:, None]) & (keys[None] <= cache.column)  # [B, K]
    h = decoder.forward(lm, tokens[:, None], positions[:, None], visible[:, None, None], cache, hooks=False)
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
        width, steps = ids.shape[1], params.max_new_tokens
        rows = ids.shape[0] * group
        length = -(-(width + steps) // self.bucket) * self.bucket
        cache = StaticKV(lm, rows, length, lm.model.embed_tokens.weight.dtype, device)
        with decoder.sdpa(lm):
            cache.group = group
            h = decoder.forward(lm, ids, decoder.positions_of(mask), decoder.causal_padded(mask), cache, hooks=False)
            cache.group = 0
            logits = lm.lm_head(h[:, -1]).float().repeat_interleave(group, dim=0)  # [N, V]
            prompt_len = mask.sum(1).repeat_interleave(group)  # [N]
            return self._decode(lm, cache, logits, prompt_len, width, params, pad_id, generator, tokenizer, with_logprobs)

    def _decode(self, lm, cache, logits, prompt_len, width, params, pad_id, generator, tokenizer, with_logprobs) -> Completions:
        n, steps, device = logits.shape[0], params.max_new_tokens, logits.device
        out = torch.full((n, steps), pad_id, dtype=torch.long, device=device)
        logp = torch.zeros((n, steps), dtype=torch.float32, device=device) if with_logprobs else None
        stop_ids = torch.tensor(params.stop_ids, dtype=torch.long, device=device)
        strings = StopStrings(params.stop_strings, tokenizer, n) if params.stop_strings else None
        cut = [steps] * n  # per output row: columns kept because of stop strings
        rows = torch.arange(n, device=device)  # output row of each decode row
        first_key = (width - prompt_len).long()  # [B] per decode row
        positions = prompt_len.long()
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
                running = int((~done).sum())
                if running == 0:
                    break
                if self._compiled is None and 2 * running <= len(rows):
                    keep = (~done).nonzero().squeeze(1)
                    rows, done, tokens, first_key, positions = (t[keep] for t in (rows, done, tokens, first_key, positions))
                    cache.keep(keep)
            cache.column.fill_(width + i)
            cache.live = None if self._compiled is not None else width + i + 1
            logits = step(lm, cache, tokens, positions + i, first_key)
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

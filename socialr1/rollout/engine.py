"""The rollout engine: completions from a Hugging Face decoder-only model with our own decode loop.

- Each distinct prompt is prefilled once, and its keys/values are stored once for its G rows. The
  decode attention (group_attention) is one SDPA call per layer in which the G rows of a prompt are
  one block of queries: the prompt's keys/values are read once for the whole group, next to each
  row's own generated ones (GroupKV's layout), and a bias keeps rows apart. Prompt KV memory and
  reads are 1/G of a G-copies cache.
- The KV cache is static, [P, kv_heads, Wp + G * Lg, D] per layer, Lg rounded up to a multiple of
  `bucket` (and, when compiling, Wp too) so shapes repeat across batches. Eager decode steps read the
  columns written so far only (cost grows with the current length, not the bucket); compiled steps
  read the whole bucket under the bias, so each bucket is one graph.
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
import torch.nn.functional as F
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
    """Static KV cache behind HF's `Cache.update` interface, one [P, kv_heads, Wp + G * Lg, D] tensor
    of keys and one of values per layer: a prompt's columns [0, Wp) hold its prompt, right-aligned,
    and column Wp + t * G + g holds token t of its row g. A decode step writes G adjacent columns
    per prompt, and the columns written so far are a prefix, so eager steps read that prefix only."""

    def __init__(self, lm: PreTrainedModel, prompts: int, group: int, prompt_width: int, gen_width: int,
                 dtype: torch.dtype, device: torch.device):
        cfg = lm.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        layers, heads = len(lm.model.layers), cfg.num_key_value_heads
        shape = (prompts, heads, prompt_width + group * gen_width, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.group, self.prompt_width, self.prefilling = group, prompt_width, False
        self.first_columns = torch.arange(group, device=device) + prompt_width  # token 0 of each row
        self.columns = self.first_columns.clone()  # where the decode step writes
        self.live: int | None = None  # columns attention reads; None: all (compiled)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def at_step(self, t: int) -> None:
        """The next decode step writes token t of every row."""
        torch.add(self.first_columns, t * self.group, out=self.columns)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefilling:  # key: [P, kv, W, D]
            end = self.prompt_width
            self.keys[layer_idx][:, :, end - key.shape[2] : end] = key
            self.values[layer_idx][:, :, end - key.shape[2] : end] = value
            return key, value
        p, kv = self.keys[layer_idx].shape[:2]  # key: [N = P * G, kv, 1, D] -> [P, kv, G, D]
        for cache, new in ((self.keys[layer_idx], key), (self.values[layer_idx], value)):
            cache.index_copy_(2, self.columns, new.reshape(p, self.group, kv, -1).transpose(1, 2))
        return key, value

    def keep(self, groups: torch.Tensor) -> torch.Tensor:
        """Keep these prompts (and their rows); returns the kept rows' indices."""
        self.keys = [k.index_select(0, groups) for k in self.keys]
        self.values = [v.index_select(0, groups) for v in self.values]
        return (groups[:, None] * self.group + torch.arange(self.group, device=groups.device)).flatten()


def group_bias(cache: GroupKV, prompt_len: torch.Tensor, rep: int) -> torch.Tensor:
    """Additive attention bias [P, 1, G * rep, S] (cache dtype) for the grouped queries of each
    prompt, ordered (row, head in the key/value group): 0 on the prompt's tokens and on the row's own
    generated columns, -inf on prompt padding and on the other rows' columns."""
    p, s, wp, g = cache.keys[0].shape[0], cache.length, cache.prompt_width, cache.group
    col = torch.arange(s, device=prompt_len.device)
    prompt_ok = (col < wp) & (col >= wp - prompt_len[:, None])  # [P, S]
    own = (col >= wp) & ((col - wp) % g == torch.arange(g, device=col.device)[:, None])  # [G, S]
    ok = (prompt_ok[:, None] | own[None]).repeat_interleave(rep, dim=1)  # [P, G * rep, S]
    return torch.zeros(ok.shape, dtype=cache.keys[0].dtype, device=col.device).masked_fill(~ok, float("-inf"))[:, None]


def group_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [N, H, 1, D], N = P * G rows, a prompt's rows adjacent
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    group_kv: GroupKV | None = None,
    bias: torch.Tensor | None = None,  # [P, 1, G * rep, S'] from group_bias, S' the columns read
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """One decode step's attention over GroupKV, one SDPA call: the G rows of a prompt are one query
    block of G * rep queries per key/value head, so its prompt keys are read once for the group and
    the bias leaves each row its own generated keys. Returns [N, 1, H, D] as HF's attention
    functions do."""
    live = bias.shape[-1]
    k, v = group_kv.keys[module.layer_idx][:, :, :live], group_kv.values[module.layer_idx][:, :, :live]  # [P, kv, S', D]
    n, heads, _, d = query.shape
    p, kv = k.shape[:2]
    g, rep = n // p, heads // kv
    q = query.reshape(p, g, kv, rep, d).transpose(1, 2).reshape(p, kv, g * rep, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scaling)  # [P, kv, G * rep, D]
    return out.reshape(p, kv, g, rep, d).transpose(1, 2).reshape(n, 1, heads, d), None


AttentionInterface.register(GROUP_ATTENTION, group_attention)


def decode_step(
    lm: PreTrainedModel,
    cache: GroupKV,
    tokens: torch.Tensor,  # [N] the tokens just chosen
    positions: torch.Tensor,  # [N] their position ids
    bias: torch.Tensor,  # [P, 1, G * rep, S] from group_bias
) -> torch.Tensor:
    """One token per row through the model -> next-token logits [N, V] (float32). Eager steps read
    the columns written so far; compiled ones read all S under a bias that hides the rest."""
    if cache.live is not None:
        bias = bias[..., : cache.live]
    else:
        unwritten = torch.arange(cache.length, device=bias.device) > cache.columns[-1]
        bias = bias.masked_fill(unwritten, float("-inf"))
    h = decoder.forward(lm, tokens[:, None], positions[:, None], None, cache, hooks=False, group_kv=cache, bias=bias)
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
                 log: Callable[[str], None] = print, interrupt: Callable[[], None] | None = None):
        self.compile, self.bucket, self.max_graphs, self.log = compile, bucket, max_graphs, log
        self.interrupt = interrupt  # called at every host check; may raise to abandon the rollout (a stop signal)
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
        # Inference mode skips autograd's per-op bookkeeping (about a tenth of an eager decode step on
        # CPU); the results are cloned out of it so that training may use them.
        with torch.inference_mode():
            c = self._generate(lm, prompts, group, params, pad_id, generator, tokenizer, with_logprobs)
        return Completions(c.ids.clone(), c.mask.clone(), None if c.logprobs is None else c.logprobs.clone())

    def _generate(self, lm: PreTrainedModel, prompts: Sequence[Sequence[int]], group: int, params: SamplingParams, pad_id: int,
                  generator: torch.Generator | None, tokenizer: PreTrainedTokenizerBase | None, with_logprobs: bool) -> Completions:
        decoder.check_supported(lm)
        if params.stop_strings and tokenizer is None:
            raise ValueError("stop strings need the tokenizer")
        device = lm.lm_head.weight.device
        ids, mask = (t.to(device) for t in pad_left(prompts, pad_id))
        width = ids.shape[1]
        # Eager steps read the prompt part whole: only compiled steps need its width to repeat.
        prompt_width = round_up(width, self.bucket) if self._compiled is not None else width
        cache = GroupKV(lm, len(prompts), group, prompt_width, round_up(params.max_new_tokens, self.bucket),
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
        bias = group_bias(cache, prompt_len, lm.config.num_attention_heads // lm.config.num_key_value_heads)
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
                if self.interrupt is not None:
                    self.interrupt()
                if strings is not None:
                    self._find_strings(strings, out, rows, done, checked, i + 1, cut)
                    checked = i + 1
                finished = done.view(-1, group).all(1)  # [P'] groups whose rows have all finished
                running = int((~finished).sum())
                if running == 0:
                    break
                if self._compiled is None and 2 * running <= len(finished):
                    keep = cache.keep((~finished).nonzero().squeeze(1))
                    bias = bias[~finished]
                    rows, done, tokens, positions = (t[keep] for t in (rows, done, tokens, positions))
            cache.at_step(i)
            cache.live = None if self._compiled is not None else cache.prompt_width + (i + 1) * group
            logits = step(lm, cache, tokens, positions + i, bias)
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

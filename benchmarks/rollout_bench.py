"""Our rollout engine against Hugging Face `model.generate` (dynamic and static KV cache), on the
same model, prompts and token budget, in completion tokens per second.

    python benchmarks/rollout_bench.py                      # tiny Qwen3, 4 prompts x 500 tokens, G=5, CPU
    python benchmarks/rollout_bench.py --shape qwen3-4b --device cuda --dtype bfloat16 --compile

Every row decodes exactly `new_tokens` tokens (no stop token), sampling at temperature 1 with
top-k / top-p off, so all methods do the same work. Methods run interleaved, `repeats` rounds after
one warm-up round, and the median per method is reported: on a shared machine the ratios measured
side by side are what carries over. `run()` is imported by benchmarks/gpu_check.py."""

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1.rollout import Engine, SamplingParams  # noqa: E402

SHAPES = {
    # The tiny model of the step benchmark; Qwen3-4B's published shapes (random weights).
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 intermediate_size=384, vocab_size=1024, tie_word_embeddings=True),
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                     intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True),
}


def build(shape: str, dtype: torch.dtype, device: torch.device) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    config = Qwen3Config(**SHAPES[shape], max_position_embeddings=4096, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    with torch.device(device):
        lm = Qwen3ForCausalLM(config).to(dtype)
    lm.generation_config.eos_token_id = None
    return lm.eval()


def make_prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    """Ragged prompts around `length` tokens (the longest exactly `length`), ids 1.. (0 is padding)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (length - 7 * i,), generator=g).tolist() for i in range(count)]


def hf_generate(lm, prompts: list[list[int]], group: int, new_tokens: int, cache: str) -> torch.Tensor:
    from socialr1.rollout import pad_left

    ids, mask = pad_left([p for p in prompts for _ in range(group)], pad_id=0)
    device = lm.device
    kwargs = dict(cache_implementation="static", disable_compile=True) if cache == "static" else {}
    return lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                       pad_token_id=0, **kwargs)


def run(
    shape: Literal["tiny", "qwen3-4b"] = "tiny",
    compile: bool = False,
    prompts: int = 4,
    group: int = 5,
    new_tokens: int = 128,
    prompt_tokens: int = 500,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 3,
    hf: bool = True,
) -> dict:
    """Completion tokens/s of each method (median of `repeats`), and the ratios to generate."""
    dev = torch.device(device)
    lm = build(shape, getattr(torch, dtype), dev)
    batch = make_prompts(prompts, prompt_tokens, lm.config.vocab_size)
    params = SamplingParams(new_tokens, temperature=1.0)
    methods = {"ours": lambda: Engine().generate(lm, batch, group, params, pad_id=0)}
    if compile:
        engine = Engine(compile=True)
        methods["ours+compile"] = lambda: engine.generate(lm, batch, group, params, pad_id=0)
    if hf:
        methods["generate(dynamic)"] = lambda: hf_generate(lm, batch, group, new_tokens, "dynamic")
        methods["generate(static)"] = lambda: hf_generate(lm, batch, group, new_tokens, "static")
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(repeats + 1):  # round 0 warms up (and compiles)
        for name, fn in methods.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                seconds[name].append(time.perf_counter() - t0)
    tokens = prompts * group * new_tokens
    result = {
        "shape": shape, "device": device, "dtype": dtype, "prompts": prompts, "group": group,
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "threads": torch.get_num_threads(),
        "seconds": {k: statistics.median(v) for k, v in seconds.items()},
    }
    result["tokens_per_s"] = {k: tokens / s for k, s in result["seconds"].items()}
    if hf:
        base = result["tokens_per_s"]["generate(dynamic)"]
        result["speedup_vs_generate_dynamic"] = {k: v / base for k, v in result["tokens_per_s"].items()}
    return result


@dataclass
class Args:
    shape: Literal["tiny", "qwen3-4b"] = "tiny"
    """tiny: hidden 128, 4 layers, vocab 1024; qwen3-4b: Qwen3-4B's shapes with random weights."""
    compile: bool = False
    """Also time our engine with the compiled decode step (--rollout.compile)."""
    prompts: int = 4
    group: int = 5
    new_tokens: int = 128
    prompt_tokens: int = 500
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "cpu"
    repeats: int = 3
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    out: str = "benchmarks/results/rollout_bench.json"


def main(a: Args) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    r = run(a.shape, a.compile, a.prompts, a.group, a.new_tokens, a.prompt_tokens, a.dtype, a.device, a.repeats)
    print(f"{a.shape} on {a.device} ({a.dtype}, {r['threads']} threads): {a.prompts} prompts x G={a.group}, "
          f"{a.prompt_tokens}-token prompts, {a.new_tokens} new tokens, median of {a.repeats}")
    print(f"{'method':<20} {'s':>8} {'tokens/s':>10} {'vs generate(dynamic)':>22}")
    for name, s in r["seconds"].items():
        print(f"{name:<20} {s:8.3f} {r['tokens_per_s'][name]:10.1f} {r['speedup_vs_generate_dynamic'][name]:21.2f}x")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Reward speed: the vectorized SIP reward vs the per-sample reference, and the LLM judge.

Lexical part: B = 64 prompts x 5 completions of up to 2,048 tokens (fuzzed SIP traces padded with reasoning
sentences, some truncated), tiny BPE tokenizer. Checks the outputs are identical, then prints
median wall-clock and process CPU times and their ratios, for the vectorized reward with 1 torch
thread (the RewardConfig.cpu_threads default) and with torch's default thread count. The reference
is timed from token ids too (decode + score per row); per-item targets are computed once
beforehand on both sides, as the trainer does.

Judge part (--judge): --reward.formula social-r1 --reward.structure judge on 320 completions of
about 1,000 tokens, against a local OpenAI-compatible endpoint (tests/reward_server.py on
127.0.0.1) that answers each request after a fixed delay; wall time of one `score` call at the
default concurrency against concurrency 1 (serial).

    python benchmarks/reward_bench.py [--repeats 5] [--judge] [--delay 0.2]
"""

import argparse
import dataclasses
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import rewards_fuzz as fuzz  # noqa: E402
from tests import rewards_reference as ref  # noqa: E402
from tests.reward_server import Reply, RewardServer  # noqa: E402
from socialr1.rewards import JudgeConfig, RewardConfig, SIPReward  # noqa: E402
from socialr1.sip import SIPFormat  # noqa: E402
from socialr1.synthetic import generate_items  # noqa: E402
from socialr1.tiny import build_tokenizer  # noqa: E402

PROMPTS, GROUP, MAX_TOKENS, STEP, TOTAL_STEPS = 64, 5, 2048, 500, 1000


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and process CPU seconds of fn(), and its last result."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--judge", action="store_true", help="time the LLM judge instead")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds the endpoint takes per request")
    args = parser.parse_args()
    if args.judge:
        judge_speed(args.delay)
        return

    fmt, cfg = SIPFormat(), RewardConfig()
    items = generate_items(PROMPTS, seed=0)
    tokenizer = build_tokenizer(
        [f"{it.story}\n{it.question}\n" + "\n".join(it.options) for it in items]
        + [fmt.render(it.gold_stages, it.answer_letter) for it in items]
    )
    rng = random.Random(0)
    filler = [s for it in items for s in it.gold_stages]
    texts, index = [], []
    for p, item in enumerate(items):
        for _ in range(GROUP):
            texts.append(fuzz.mutated(item, fmt, rng, filler, extra=rng.randint(0, 50)))
            index.append(p)
    ids, mask = fuzz.tokenize_batch(tokenizer, texts, rng, MAX_TOKENS)
    item_index = torch.tensor(index)

    feats = SIPReward(tokenizer, cfg, total_steps=TOTAL_STEPS, fmt=fmt).encode_items(items)
    targets = [ref.item_targets(it, cfg) for it in items]
    lengths = mask.sum(1).tolist()
    id_rows = [row[:n] for row, n in zip(ids.tolist(), lengths)]

    def reference() -> dict[str, list[float]]:
        rows = [
            ref.reference_scores(
                tokenizer.decode(r, skip_special_tokens=True, clean_up_tokenization_spaces=False),
                targets[i],
                n,
                STEP,
                TOTAL_STEPS,
                cfg,
                fmt,
            )
            for r, i, n in zip(id_rows, index, lengths)
        ]
        return {k: [r[k] for r in rows] for k in rows[0]}

    threads = torch.get_num_threads()
    n_ref = max(1, args.repeats // 2)
    median_len = int(statistics.median(lengths))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"batch: B={len(texts)} ({PROMPTS} prompts x {GROUP}), tokens per row: median {median_len}, ", end="")
    print(f"max {max(lengths)} (limit {MAX_TOKENS}), {int(sum(lengths))} in all; vocab {len(tokenizer)}")

    def vectorized_run(n_threads: int) -> tuple[float, float, dict[str, torch.Tensor]]:
        reward = SIPReward(tokenizer, dataclasses.replace(cfg, cpu_threads=n_threads), total_steps=TOTAL_STEPS, fmt=fmt)
        reward.score(ids, mask, feats, item_index, STEP)  # warm-up
        return timed(lambda: reward.score(ids, mask, feats, item_index, STEP), args.repeats)

    vectorized = {n: vectorized_run(n) for n in sorted({1, threads})}
    ref_wall, ref_cpu, refs = timed(reference, n_ref)
    want = {k: torch.tensor(v, dtype=torch.float32) for k, v in refs.items()}
    exact = all(torch.equal(out[k], want[k]) for *_, out in vectorized.values() for k in ("format", "accuracy"))
    diff = max((out[k] - want[k]).abs().max().item() for *_, out in vectorized.values() for k in want)
    print(f"identical: format/accuracy exact={exact}, max |vectorized - reference| over all components = {diff:.2e}")
    print(f"reference (decode + per-sample, {n_ref} runs): ", end="")
    print(f"median wall {ref_wall * 1e3:.0f} ms, cpu {ref_cpu * 1e3:.0f} ms")
    for n, (wall, cpu, _) in vectorized.items():
        print(f"vectorized score(), cpu_threads={n} ({args.repeats} runs): median wall {wall * 1e3:.1f} ms ", end="")
        print(f"({ref_wall / wall:.1f}x), cpu {cpu * 1e3:.1f} ms ({ref_cpu / cpu:.1f}x)")
    print("component means:", {k: round(v.mean().item(), 3) for k, v in want.items()})
    if not exact or diff > 1e-5:
        raise SystemExit("vectorized and reference rewards differ")


def judge_speed(delay: float, n: int = 320) -> None:
    fmt = SIPFormat()
    items = generate_items(n // GROUP, seed=0)
    tokenizer = build_tokenizer([fmt.render(it.gold_stages, it.answer_letter) for it in items])
    rng = random.Random(0)
    filler = [s for it in items for s in it.gold_stages]
    texts = [
        fmt.render(fuzz.good_trace(it, fmt, rng, filler, extra=rng.randint(10, 14)), it.answer_letter)
        for it in items
        for _ in range(GROUP)
    ]
    ids, mask = fuzz.tokenize_batch(tokenizer, texts, rng, MAX_TOKENS, truncate_p=0.0)
    item_index = torch.arange(len(items)).repeat_interleave(GROUP)
    lengths = mask.sum(1)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{len(texts)} completions, tokens per row: median {int(lengths.median())}, min {int(lengths.min())}, max {int(lengths.max())}")
    urls: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(delay, urls), daemon=True)  # its own GIL
    server.start()
    url = urls.get()
    for concurrency in (JudgeConfig.concurrency, 1):
        judge = JudgeConfig(base_url=url + "/v1", model="judge", concurrency=concurrency)
        reward = SIPReward(tokenizer, RewardConfig(formula="social-r1", judge=judge), fmt=fmt)
        feats = reward.encode_items(items)
        start = time.perf_counter()
        out = reward.score(ids, mask, feats, item_index, 0)
        wall = time.perf_counter() - start
        asked = int((out["structure"] > 0).sum())
        print(f"concurrency {concurrency}: {asked} completions judged ({delay * 1e3:.0f} ms a request), wall {wall:.2f} s, "
              f"serial sum of delays {asked * delay:.1f} s, judge failures {int(out['judge_failed'].sum())}")
    server.terminate()


def _serve(delay: float, urls: multiprocessing.Queue) -> None:
    with RewardServer(lambda kind, text, attempt: Reply([0.5], delay=delay)) as server:
        urls.put(server.url)
        server.thread.join()


if __name__ == "__main__":
    main()

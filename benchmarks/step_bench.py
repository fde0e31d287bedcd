"""A full GRPO step of our trainer against TRL's GRPOTrainer, side by side in one process, on the
same tiny Qwen3 (hidden 128, 4 layers, same weights) and tokenizer, the same prompts in the same
order (our SIP prompt of generated items), 4 prompts x 5 samples, 128 new tokens, beta 0.04, loss
`grpo`, no activation checkpointing, one micro-batch of 20.

    pip install -r benchmarks/requirements-bench.txt     # trl (benchmark only)
    python benchmarks/step_bench.py --threads 1

Prints seconds per step, completion tokens/s and our phase times (generation, log-probs, update),
writes JSON. Steps after the first (warm-up) are timed; the median is reported. Our side runs
before and after TRL's (load on a shared machine drifts) and the ratio uses the mean of both.
Then ours once more with --rollout.compile (the decode step compiled once for its one cache bucket,
during the untimed first step). Without trl installed only our side runs."""

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from socialr1 import tiny  # noqa: E402
from socialr1.config import parse  # noqa: E402
from socialr1.prompts import user_message  # noqa: E402
from socialr1.trainer import Trainer  # noqa: E402

PROMPTS, GROUP, NEW_TOKENS, HIDDEN, LAYERS, HEADS = 4, 5, 128, 128, 4, 4


def our_trainer(steps: int, out: str, share_prompt: bool, compile: bool = False) -> Trainer:
    args = ["demo", "--data.synthetic", "400", "--data.eval-synthetic", "0", "--warmstart.steps", "0",
            "--model.tiny-hidden-size", str(HIDDEN), "--model.tiny-layers", str(LAYERS), "--model.tiny-heads", str(HEADS),
            "--model.tiny-vocab-size", "1024", "--rollout.prompts-per-step", str(PROMPTS), "--rollout.group-size", str(GROUP),
            "--rollout.max-new-tokens", str(NEW_TOKENS), "--grpo.beta", "0.04", "--grpo.loss-type", "grpo",
            "--grpo.micro-batch-size", str(PROMPTS * GROUP), "--steps", str(steps), "--output-dir", out, "--overwrite",
            "--sample-every", "0"] + ([] if share_prompt else ["--grpo.no-share-prompt"]) + (["--rollout.compile"] if compile else [])
    trainer = Trainer(parse(args))
    if hasattr(trainer, "setup"):
        trainer.setup()
    return trainer


def run_ours(trainer: Trainer, steps: range) -> dict:
    rows = [trainer.step(s) for s in steps]
    first_step_s, rows = rows[0]["time/step_s"], rows[1:]
    keys = ("time/step_s", "time/generation_s", "time/logprobs_s", "time/update_s", "time/reward_s")
    med = {k.removeprefix("time/"): statistics.median(r[k] for r in rows) for k in keys}
    tokens = statistics.median(r["completion/tokens"] for r in rows)
    return {"s_per_step": med["step_s"], "tokens_per_s": tokens / med["step_s"], "completion_tokens": tokens, "phases": med,
            "first_step_s": first_step_s}


def run_trl(trainer: Trainer, steps: int) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    lm = tiny.build_model(trainer.tokenizer, HIDDEN, LAYERS, HEADS, seed=trainer.cfg.seed)  # our initial weights
    order = [i for s in range(steps) for i in trainer.prompt_indices(s)]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": user_message(trainer.items[i], trainer.cfg.sip)}]}
                              for i in order])
    lengths: list[float] = []

    def reward(completions, completion_ids, **_):
        lengths.extend(len(c) for c in completion_ids)
        return [float(len(c)) for c in completion_ids]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        lm.save_pretrained(f"{tmp}/model")  # TRL builds its reference model from a path
        cfg = GRPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
            max_steps=steps, per_device_train_batch_size=PROMPTS * GROUP, gradient_accumulation_steps=1,
            num_generations=GROUP, max_completion_length=NEW_TOKENS, beta=0.04, loss_type="grpo",
            learning_rate=trainer.cfg.optim.lr, temperature=1.0, top_p=1.0, top_k=0, shuffle_dataset=False,
            gradient_checkpointing=False, seed=trainer.cfg.seed,
        )
        GRPOTrainer(model=f"{tmp}/model", reward_funcs=reward, args=cfg, train_dataset=data, processing_class=trainer.tokenizer,
                    callbacks=[Clock()]).train()
    per_step = [sum(lengths[i * PROMPTS * GROUP : (i + 1) * PROMPTS * GROUP]) for i in range(steps)]
    s = statistics.median(times[1:])
    tokens = statistics.median(per_step[1:])
    return {"s_per_step": s, "tokens_per_s": tokens / s, "completion_tokens": tokens}


@dataclass
class Args:
    steps: int = 4
    """GRPO steps per side; the first is a warm-up and is not timed."""
    threads: int = 0
    """torch intra-op threads for both sides (0: torch's default)."""
    compile: bool = True
    """Also run ours with --rollout.compile (its first step, not timed, compiles the decode step)."""
    out: str = "benchmarks/results/step_bench.json"


def main(a: Args) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = our_trainer(2 * a.steps, tmp, share_prompt=True)
        result = {"threads": torch.get_num_threads(), "ours": run_ours(trainer, range(a.steps))}
        if importlib.util.find_spec("trl"):
            result["trl"] = run_trl(trainer, a.steps)
            # Ours again after TRL, on the next prompts: load on a shared machine drifts; both runs are reported.
            result["ours_after"] = run_ours(trainer, range(a.steps, 2 * a.steps))
            ours = (result["ours"]["tokens_per_s"] + result["ours_after"]["tokens_per_s"]) / 2
            result["speedup_tokens_per_s"] = ours / result["trl"]["tokens_per_s"]
        trainer.close()
        if a.compile:
            trainer = our_trainer(a.steps, f"{tmp}/compiled", share_prompt=True, compile=True)
            result["ours_compiled"] = run_ours(trainer, range(a.steps))
            trainer.close()
            if "trl" in result:
                result["speedup_compiled_tokens_per_s"] = result["ours_compiled"]["tokens_per_s"] / result["trl"]["tokens_per_s"]
    print(f"GRPO step, tiny Qwen3 ({HIDDEN} hidden, {LAYERS} layers), {PROMPTS} prompts x {GROUP}, {NEW_TOKENS} new tokens, "
          f"{result['threads']} threads, median of {a.steps - 1} steps")
    print(f"{'':<10} {'s/step':>8} {'tokens/s':>10}")
    for side in ("ours", "trl", "ours_after", "ours_compiled"):
        if side in result:
            print(f"{side:<10} {result[side]['s_per_step']:8.3f} {result[side]['tokens_per_s']:10.1f}")
    for side in ("ours", "ours_after", "ours_compiled"):
        if side in result:
            print(f"{side} phases (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in result[side]["phases"].items()))
    if "speedup_tokens_per_s" in result:
        print(f"ours (mean of before and after) / TRL tokens/s: {result['speedup_tokens_per_s']:.2f}x")
    if "speedup_compiled_tokens_per_s" in result:
        print(f"ours with --rollout.compile / TRL tokens/s: {result['speedup_compiled_tokens_per_s']:.2f}x "
              f"(its first step, compile included, took {result['ours_compiled']['first_step_s']:.1f} s)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Rollout generation speed: completion tokens/s of the ways a GRPO step could sample its completions.

    python bench/rollout_speed.py --model smollm2 --batch-size 4 --micro-batch-size 2 --max-length 256 --steps 2 --warmup 1
    python bench/rollout_speed.py --hidden 64 --layers 2 --vocab 4096 --max-length 128 --steps 2 --warmup 1  # tiny

All on the same prompts and model. Takes bench/run.py's flags (--model and its shape, --precision,
--batch-size prompts a step, each with --num-generations completions of at most --max-new-tokens tokens,
prompts of under --max-length tokens from the hh-rlhf slice as its grpo workload takes them, --warmup
untimed and --steps timed steps, --threads, --json), and --micro-batch-size (train.py's --batch-size:
prompts a micro-batch; bench/run.py's step is one micro-batch) and --variants. Every variant samples at
temperature 1.0 and top-p 1.0 until the end-of-turn token, from the model in eval mode without gradients,
as rollouts.rollout does (under --precision bf16-mixed in CPU bf16 autocast, as Lightning runs the step):
  ours          rollouts.rollout as it is: generation.sample_token_ids once a micro-batch (its prompts
                left-padded, num_return_sequences expanding each to k rows, transformers' dynamic KV cache,
                top-k off), seeded per micro-batch by rollouts.sample_seed
  default       model.generate once a micro-batch as a user first writes it: do_sample=True, the rest from
                the model's generation_config and transformers' defaults (top-k 50 where it sets none)
  per-prompt    sample_token_ids once a prompt: no padding, the smallest batches
  one-call      sample_token_ids once a step, all its micro-batches in one batch (with one micro-batch a
                step, the same call as ours)
  static-cache  ours with cache_implementation="static": the KV cache allocated once, at prompt + budget
                length, and attended in full at every step (on CUDA transformers also compiles the forward
                for it; on the CPU it does not)
default and static-cache go through generation._generate_batch, so only the generate arguments differ
from ours (the padding and the cut after the end-of-turn token are the same).

Figures per variant: median wall and CPU seconds a step over the timed steps (variants take turns step
by step, so a busy machine slows them alike), completion tokens sampled a step (up to and including the
end-of-turn token; the variants draw different samples, so their counts differ a little) and completion
tokens/s (the timed steps' tokens over their seconds).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
# (Not named bench/rollouts.py: with the root on PYTHONPATH after bench/, module.py's `import rollouts` would find it.)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from bench.run import parse_args  # noqa: E402 - after the path bootstrap above
from bench.workloads import bench_tokenizer, build_model, scratch_folder, tokenized_rows, write_json  # noqa: E402

VARIANTS = ("ours", "default", "per-prompt", "one-call", "static-cache")


def sample_step(variant: str, model, tokenizer, prompt_ids: list[list[int]], args, step: int) -> list[list[int]]:
    """One step's completions (k a prompt, flattened), sampled the variant's way."""
    import torch

    import generation
    from rollouts import sample_seed
    k, budget, eos, pad = args.num_generations, args.max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id
    size = len(prompt_ids) if variant == "one-call" else 1 if variant == "per-prompt" else args.micro_batch_size
    batches = [prompt_ids[i:i + size] for i in range(0, len(prompt_ids), size)]
    groups = []
    for i, batch in enumerate(batches):
        seed = sample_seed(args.seed, step, 0, i)
        if variant in ("ours", "per-prompt", "one-call"):
            groups += generation.sample_token_ids(model, tokenizer, batch, max_new_tokens=budget,
                                                  num_return_sequences=k, temperature=1.0, top_p=1.0,
                                                  batch_size=size, seed=seed)
            continue
        decoding = ({"do_sample": True} if variant == "default"
                    else {**generation._decoding(1.0, 1.0), "cache_implementation": "static"})
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            groups += generation._generate_batch(model, batch, budget, eos, pad, k, decoding)
    return [c for g in groups for c in g]


def measure(args) -> list[dict]:
    """Every variant's steps, taking turns; its figures over the timed ones."""
    import torch

    from models import load_causal_lm
    folder = scratch_folder("bench-rollouts-")
    build_model(args, folder)
    tokenizer = bench_tokenizer(args, folder)
    model = load_causal_lm(os.path.join(folder, "lm")).eval()
    prompt_ids = [r["prompt_ids"] for r in tokenized_rows("grpo", tokenizer, args.max_length, args.batch_size)]
    variants = [v for v in args.variants.split(",") if v]
    record = {v: [] for v in variants}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16-mixed"
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        for step in range(args.warmup + args.steps):
            for v in variants:
                start = time.perf_counter(), time.process_time()
                completions = sample_step(v, model, tokenizer, prompt_ids, args, step)
                record[v].append((time.perf_counter() - start[0], time.process_time() - start[1],
                                  sum(len(c) for c in completions)))
    table = []
    for v in variants:
        timed = record[v][args.warmup:]
        seconds = sum(r[0] for r in timed)
        table.append({"variant": v, "median_step_s": statistics.median(r[0] for r in timed),
                      "median_step_cpu_s": statistics.median(r[1] for r in timed),
                      "completion_tokens_per_step": statistics.median(r[2] for r in timed),
                      "completion_tokens_per_s": sum(r[2] for r in timed) / seconds})
    return table


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--micro-batch-size", type=int, default=None,
                     help="prompts a micro-batch (default: --batch-size, one micro-batch a step)")
    own.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(__doc__.split("\n")[0] + "\n\nIts own flags:\n" + own.format_help().split("\n", 2)[2]
              + "\nand bench/run.py's:")
    known, rest = own.parse_known_args(argv)
    args = parse_args(rest)
    args.micro_batch_size, args.variants = known.micro_batch_size or args.batch_size, known.variants
    unknown = set(args.variants.split(",")) - set(VARIANTS) - {""}
    if unknown or args.steps < 1:
        raise SystemExit(f"--variants takes {', '.join(VARIANTS)}, and --steps must be at least 1.")
    import torch
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    table = measure(args)
    print(f"\n{args.model} model, {args.precision}, {args.threads} threads; a step: {args.batch_size} prompts in "
          f"micro-batches of {args.micro_batch_size}, x {args.num_generations} completions of at most "
          f"{args.max_new_tokens} tokens; {args.warmup} warm-up + {args.steps} timed steps")
    print("| variant | median step (s) | median step CPU (s) | completion tokens / step | completion tokens/s |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['variant']} | {r['median_step_s']:.3f} | {r['median_step_cpu_s']:.3f} | "
              f"{r['completion_tokens_per_step']:.0f} | {r['completion_tokens_per_s']:.0f} |")
    if args.json:
        write_json(args.json, args, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

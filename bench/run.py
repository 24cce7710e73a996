"""Training throughput, ours against TRL, on identical work on this machine, in one run.

    pip install -r bench/requirements.txt          # TRL and what it needs (not a runtime dependency)
    python bench/run.py --json bench-run.json       # the full size: Qwen2.5 vocabulary, max length 512
    python bench/run.py --steps 2 --warmup 1 --batch-size 2 --max-length 128 --hidden 64 --vocab 4096  # tiny
    python bench/run.py --model smollm2 --precision bf16-mixed --workloads sft,dpo   # the real SmolLM2, bf16 autocast
    python bench/run.py --model smollm2 --workloads grpo --batch-size 2 --max-length 256 --steps 3 --warmup 1  # GRPO

Workloads: sft (assistant-only loss on the chat form of the hh-rlhf slice in ../shared/data:
each transcript's chosen side as messages), dpo (its pairs, beta 0.1, sigmoid loss), bt (a
Bradley-Terry reward model on its pairs) and grpo (whole GRPO steps on its prompts: --num-generations
completions of each, of at most --max-new-tokens tokens, sampled, scored by rewards.py's length reward,
group advantages, one update; against TRL's GRPOTrainer; bench/grpo_side.py says what both sides share
and how its loss check works). Model (--model): random, a Qwen2 of --vocab (151,936:
Qwen2.5's vocabulary size) x --hidden (256), --layers (4), tied embeddings, random init from
--seed; qwen2.5-0.5b, Qwen2.5-0.5B's exact config (24 layers, hidden 896, 14 heads, 2 KV heads,
intermediate 4,864, tied) with random weights; in both the bundled tokenizer turns text into
ids (all below its 1,129 ids), so the LM head does the full-vocabulary work of a real Qwen2.5
model. smollm2: SmolLM2-135M-Instruct's real weights (Llama, 30 layers, hidden 576, vocabulary
49,152, tied) and its own tokenizer. --precision: 32-true on both sides, or bf16-mixed (ours
--precision bf16-mixed, TRL bf16=True: both bf16 autocast on CPU). Both sides get the same token ids and
labels (tokenised once by tokenization.py, given to TRL pre-tokenised; its DPOTrainer's
dataset preparation is skipped for that, as it has no pre-tokenised path), the same rows in
the same order, batch size, max length, AdamW (--lr, no weight decay, gradient norm clipped
to 1.0; TRL's rate constant, ours on train.py's schedule, see below), the same precision, and
run --warmup + --steps optimizer steps.

Configurations, each in its own subprocess (so each peak RSS is its own):
  ours          train.py's defaults (for dpo: precomputed reference log-probs) but --no-packing
  ours-packed   train.py's defaults (--packing is one); not for grpo, whose rows are never packed
  trl-default   TRL's default config, but at --precision: TRL 1.16's configs default to
                bf16=True, which on CPU is bf16 autocast, so bf16 follows --precision to keep
                both sides on the same arithmetic
  trl-best      TRL's fastest: activation checkpointing off (its configs turn it on), and sft
                packing=True + padding_free=True, dpo precompute_ref_log_probs=True
Our side runs train.py's training step itself (PostTrainingModule.training_step: compute ->
backward -> clip -> AdamW, as configure_optimizers sets it up) under a lightning.Trainer on CPU,
timed from each batch's start hook to its end hook (collation outside, Lightning's logging
inside); its learning rate follows train.py's schedule (warm-up, linear decay), which moves
the numbers after the first step, not the work. TRL's side is its Trainer.train().

Before timing, each TRL configuration's first batch is scored by TRL's compute_loss and by our
module on the same tensors; the two must agree to 1e-4 (the "loss check" column). For DPO
both take TRL's reference log-probs: TRL 1.16's reference model (re-loaded from the policy's
folder) scores a little apart from the policy on equal weights, where ours and TRL's policy pass
agree with a float64 log-softmax; the JSON records that gap (trl_reference_max_abs_error).

Figures: median step time after the warm-up steps; supervised tokens/s (SFT: labelled
tokens; DPO: completion tokens of both replies; BT: none; GRPO: completion tokens sampled) and
total tokens/s (non-padding tokens fed to the policy); peak RSS of the configuration's process;
model FLOPs/s as a fraction of this machine's matmul peak in the run's precision (fp32, or bf16
for bf16-mixed; measured here, same thread count). Model FLOPs per step =
6 x tokens x (non-embedding parameters + the LM head's hidden x vocab, not for bt), the same
formula for both sides, so a side that skips work (padding, logits nobody needs) is not
credited for it; for grpo 8 x, the rollout's forward over the same tokens (2 x) before the
update's (6 x). For grpo also: completion tokens a step, and the median rollout time (sampling,
rewards, advantages) with its share of the step, the rest being the update. Prints one table
(and one for grpo's figures) and, with --json, writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from bench.grpo_side import run_ours_grpo, run_trl_grpo  # noqa: E402 - after the path bootstrap above
from bench.trl_side import run_trl, trl_available  # noqa: E402
from bench.workloads import (MODELS, bench_tokenizer, build_model, counts_of, fit_timed, our_config,  # noqa: E402
                             scratch_folder, tokenized_rows, write_json)

WORKLOADS = ("sft", "dpo", "bt", "grpo")
CONFIGS = {**{w: ("ours", "ours-packed", "trl-default", "trl-best") for w in ("sft", "dpo", "bt")},
           "grpo": ("ours", "trl-default", "trl-best")}
# Model FLOPs per token and parameter: forward and backward; grpo's rollout adds a forward.
PASSES = {"grpo": 8}


def run_ours(workload: str, variant: str, args, folder: str, callbacks=()) -> dict:
    import torch

    from collate_functions import PreferenceCollator, SFTCollator
    from models import load_causal_lm, load_reward_model
    from module import PostTrainingModule
    from reference_logps import precompute_reference_logps
    tokenizer = bench_tokenizer(args, folder)
    steps = args.warmup + args.steps
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size)
    config = our_config(workload, args, packing=variant == "ours-packed")
    model = (load_reward_model(os.path.join(folder, "rm"), tokenizer.pad_token_id) if workload == "bt"
             else load_causal_lm(os.path.join(folder, "lm")))
    module = PostTrainingModule(config, model=model, tokenizer=tokenizer)
    if workload == "dpo":
        precompute_reference_logps(model, {"train": type("Rows", (), {"dataset": rows})()}, args.batch_size,
                                   tokenizer.pad_token_id)
    pack = {"pack_capacity": args.max_length} if config.data.packing else {}
    collator = (SFTCollator if workload == "sft" else PreferenceCollator)(tokenizer.pad_token_id, args.batch_size, **pack)
    model.train()
    supervised, total = [], []
    for i in range(steps):      # the tokens of each step, counted outside the timed steps
        step = collator(rows[i * args.batch_size:(i + 1) * args.batch_size])
        sup, tot = (sum(c) for c in zip(*(counts_of(mb) for mb in step.micro_batches)))
        supervised.append(0 if workload == "bt" else sup)
        total.append(tot)
    loader = torch.utils.data.DataLoader(rows, batch_size=args.batch_size, shuffle=False, collate_fn=collator)
    return {**fit_timed(module, loader, steps, callbacks), "supervised": supervised, "total": total, "loss_check": None}


def worker(spec: dict) -> dict:
    """One configuration in this process: its figures and its peak RSS."""
    import torch
    torch.set_num_threads(spec["args"]["threads"])
    args = argparse.Namespace(**spec["args"])
    ours = spec["variant"].startswith("ours")
    if spec["workload"] == "grpo":
        run = run_ours_grpo if ours else run_trl_grpo
    else:
        run = run_ours if ours else run_trl
    result = run(spec["workload"], spec["variant"], args, spec["folder"])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["params"] = spec["params"]
    return result


def run_worker(script: str, spec: dict, label: str, threads: int, **env) -> dict:
    """Run `script --worker SPEC.json` in a fresh process (its own peak RSS and thread count,
    nothing compiled or cached from an earlier row) and return what it printed after
    BENCH-RESULT; `env` adds environment variables."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", **env)
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(script), "--worker", f.name], env=env,
                              capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    line = [x for x in proc.stdout.splitlines() if x.startswith("BENCH-RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1].removeprefix("BENCH-RESULT "))


def matmul_peak_flops(threads: int, dtype: str = "float32", n: int = 1024, repeats: int = 10) -> float:
    """Best n x n matmul rate on this machine with `threads` threads in `dtype` (FLOP/s)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def summarise(workload: str, variant: str, result: dict, args, peak: float) -> dict:
    timed = slice(args.warmup, None)
    times, sup, tot = result["times"][timed], result["supervised"][timed], result["total"][timed]
    seconds = sum(times)
    dense, head = result["params"]
    flops = PASSES.get(workload, 6) * sum(tot) * (dense + (0 if workload == "bt" else head))
    check = result["loss_check"]
    grpo = {}
    if "rollout_times" in result:
        rollout = result["rollout_times"][timed]
        grpo = {"completion_tokens_per_step": statistics.median(sup) if sup else None,
                "median_rollout_s": statistics.median(rollout) if rollout else None,
                "rollout_share": sum(rollout) / seconds if seconds else None}
    return {"workload": workload, "config": variant, "steps_timed": len(times),
            "median_step_s": statistics.median(times) if times else float("nan"),
            # CPU time of the process: with one thread, what the step costs whatever else the machine runs.
            "median_step_cpu_s": statistics.median(result["cpu_times"][timed]) if times else float("nan"),
            "supervised_tokens_per_s": sum(sup) / seconds if workload != "bt" and seconds else None,
            "total_tokens_per_s": sum(tot) / seconds if seconds else float("nan"),
            "peak_rss_mib": result["peak_rss_mib"], "flops_fraction_of_peak": flops / seconds / peak if seconds else None,
            "loss_check": check, "first_loss": result["losses"][0] if result["losses"] else None, **grpo}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workloads", default="sft,dpo,bt", help="comma-separated: sft, dpo, bt, grpo")
    p.add_argument("--sides", default="ours,trl", help="ours, trl, or both (trl needs bench/requirements.txt)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    p.add_argument("--batch-size", type=int, default=4, help="rows (SFT), pairs (DPO, BT) or prompts (GRPO) per step")
    p.add_argument("--max-length", type=int, default=512,
                   help="tokens per conversation (and per packed row); GRPO: per prompt, longer ones are skipped")
    p.add_argument("--num-generations", type=int, default=4, help="GRPO: completions sampled per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="GRPO: token budget of each completion")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, constant")
    p.add_argument("--model", choices=MODELS, default="random",
                   help="random: a random Qwen2 of --vocab/--hidden/--layers; smollm2: SmolLM2-135M-Instruct's real "
                        "weights and tokenizer; qwen2.5-0.5b: Qwen2.5-0.5B's exact config, random weights")
    p.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true",
                   help="both sides: ours --precision, TRL bf16=True for bf16-mixed (CPU autocast)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary size (Qwen2.5's)")
    p.add_argument("--hidden", type=int, default=256, help="hidden size (heads of 64; MLP 4x)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers")
    p.add_argument("--seed", type=int, default=0, help="weights init")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        with open(args.worker, encoding="utf-8") as f:
            spec = json.load(f)
        print("BENCH-RESULT " + json.dumps(worker(spec)))
        return 0
    import torch
    args.threads = args.threads or torch.get_num_threads()
    workloads = [w for w in args.workloads.split(",") if w]
    sides = set(args.sides.split(","))
    if not set(workloads) <= set(WORKLOADS) or not sides <= {"ours", "trl"}:
        raise SystemExit(f"--workloads takes {', '.join(WORKLOADS)} and --sides ours, trl.")
    if "trl" in sides and not trl_available():
        raise SystemExit("--sides trl needs TRL: pip install -r bench/requirements.txt (or pass --sides ours).")
    folder = scratch_folder("bench-model-")
    build_model(args, folder)
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "lm"))
    head = lm.config.hidden_size * lm.config.vocab_size
    dense = sum(p.numel() for p in lm.parameters()) - head          # tied: the embedding is the head
    del lm
    # The peak of the precision's matmuls: bf16-mixed runs them in bf16 (AVX512-BF16 on this CPU).
    peak = matmul_peak_flops(args.threads, "bfloat16" if args.precision == "bf16-mixed" else "float32")
    table = []
    for workload in workloads:
        for variant in CONFIGS[workload]:
            if variant.split("-")[0] not in sides:
                continue
            spec = {"workload": workload, "variant": variant, "args": vars(args), "folder": folder,
                    "params": [dense, head]}
            result = run_worker(__file__, spec, f"{workload} {variant}", args.threads)
            row = summarise(workload, variant, result, args, peak)
            check = row["loss_check"]
            if check and abs(check["trl"] - check["ours"]) > 1e-4 * max(1.0, abs(check["trl"])):
                raise SystemExit(f"{workload} {variant}: TRL's first-batch loss {check['trl']:.6f} differs from "
                                 f"ours {check['ours']:.6f} on the same batch; the timings would compare different work.")
            # grpo's loss does not see the log-probs (bench/grpo_side.py); in fp32 they must agree too (under
            # bf16-mixed TRL scores them under autocast, ours here in fp32: ~1e-3 apart, recorded).
            if check and args.precision == "32-true" and check.get("logps_max_abs_error", 0) > 1e-4:
                raise SystemExit(f"{workload} {variant}: TRL's completion log-probs differ from ours by up to "
                                 f"{check['logps_max_abs_error']:.2e} on the same batch.")
            table.append(row)
            print(f"done: {workload} {variant} ({row['median_step_s']:.2f} s/step)", file=sys.stderr, flush=True)
    print_table(table, args, peak)
    if args.json:
        write_json(args.json, args, table, matmul_peak_gflops=peak / 1e9, ratios=ratios(table))
    return 0


def ratios(table: list[dict]) -> dict:
    """Ours / TRL total tokens/s: ours unpacked and packed against TRL's default and TRL's best, per workload."""
    out = {}
    for workload in WORKLOADS:
        rows = {r["config"]: r for r in table if r["workload"] == workload}
        for ours in ("ours", "ours-packed"):
            for trl_config in ("trl-default", "trl-best"):
                if ours in rows and trl_config in rows:
                    out[f"{workload}: {ours} / {trl_config}"] = (rows[ours]["total_tokens_per_s"]
                                                                      / rows[trl_config]["total_tokens_per_s"])
    return out


def print_table(table: list[dict], args, peak: float) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\n{args.model} model, {args.precision}; matmul peak in that precision: {peak / 1e9:.1f} GFLOP/s "
          f"({args.threads} threads); batch {args.batch_size}, "
          f"max length {args.max_length}, {args.warmup} warm-up + {args.steps} timed steps")
    print("| workload | config | loss check (TRL / ours, batch 1) | median step (s) | median step CPU (s) "
          "| supervised tok/s | total tok/s | peak RSS (MiB) | model FLOPs / matmul peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in table:
        check = r["loss_check"]
        check_text = f"{check['trl']:.5f} / {check['ours']:.5f}" if check else "-"
        print(f"| {r['workload']} | {r['config']} | {check_text} | {r['median_step_s']:.3f} | {r['median_step_cpu_s']:.3f} | "
              f"{fmt(r['supervised_tokens_per_s'], '.0f')} | {r['total_tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{fmt(r['flops_fraction_of_peak'], '.1%')} |")
    grpo = [r for r in table if r["workload"] == "grpo"]
    if grpo:
        print(f"\ngrpo: {args.batch_size} prompts x {args.num_generations} completions of at most "
              f"{args.max_new_tokens} tokens a step")
        print("| config | completion tokens / step | median rollout (s) | rollout share of the steps | "
              "loss check: log-probs max abs error |")
        print("|---|---|---|---|---|")
        for r in grpo:
            check = r["loss_check"] or {}
            substituted = f" ({' and '.join(check['substituted'])} substituted)" if check.get("substituted") else ""
            print(f"| {r['config']} | {fmt(r['completion_tokens_per_step'], '.0f')} | "
                  f"{fmt(r['median_rollout_s'], '.3f')} | {fmt(r['rollout_share'], '.0%')} | "
                  f"{fmt(check.get('logps_max_abs_error'), '.1e')}{substituted} |")
    for name, value in ratios(table).items():
        print(f"{name} (total tokens/s): {value:.2f}x")


if __name__ == "__main__":
    sys.exit(main())

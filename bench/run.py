"""Training throughput, ours against TRL, on identical work on this machine, in one run.

    pip install -r bench/requirements.txt          # TRL and what it needs (not a runtime dependency)
    python bench/run.py --json bench-run.json       # the full size: Qwen2.5 vocabulary, max length 512
    python bench/run.py --steps 2 --warmup 1 --batch-size 2 --max-length 128 --hidden 64 --vocab 4096  # tiny

Workloads: sft (assistant-only loss on the chat form of the hh-rlhf slice in ../shared/data:
each transcript's chosen side as messages), dpo (its pairs, beta 0.1, sigmoid loss) and bt (a
Bradley-Terry reward model on its pairs). Model: Qwen2 architecture, --vocab (151,936: Qwen2.5's
vocabulary size) x --hidden (256), --layers (4), tied embeddings, random init from --seed, fp32
on CPU; the bundled tokenizer turns text into ids (all below its 1,129 ids), so the LM head
does the full-vocabulary work of a real Qwen2.5 model. Both sides get the same token ids and
labels (tokenised once by collate_functions.py, given to TRL pre-tokenised; its DPOTrainer's
dataset preparation is skipped for that, as it has no pre-tokenised path), the same rows in
the same order, batch size, max length, AdamW (constant --lr, no weight decay, gradient norm
clipped to 1.0), fp32 on both sides, and run --warmup + --steps optimizer steps.

Configurations, each in its own subprocess (so each peak RSS is its own):
  ours          train.py's defaults (for dpo: precomputed reference log-probs) but --no-packing
  ours-packed   train.py's defaults (--packing is one)
  trl-default   TRL's default config, but fp32: TRL 1.16's configs default to bf16=True, which
                on CPU is bf16 autocast (half the matmul work on a CPU with AVX512-BF16), so
                bf16=False keeps both sides on the same arithmetic
  trl-best      TRL's fastest: activation checkpointing off (its configs turn it on), and sft
                packing=True + padding_free=True, dpo precompute_ref_log_probs=True
Our side runs PostTrainingModule.compute -> backward -> clip -> AdamW (module.adamw, as train.py
configures it) in a plain loop (Lightning's Trainer around it adds a few ms a step); TRL's side is
its Trainer.train().

Before timing, each TRL configuration's first batch is scored by TRL's compute_loss and by our
module on the same tensors; the two must agree to 1e-4 (the "loss check" column). For DPO
both take TRL's reference log-probs: TRL 1.16's reference model (re-loaded from the policy's
folder) scores a little apart from the policy on equal weights, where ours and TRL's policy pass
agree with a float64 log-softmax; the JSON records that gap (trl_reference_max_abs_error).

Figures: median step time after the warm-up steps; supervised tokens/s (SFT: labelled
tokens; DPO: completion tokens of both replies; BT: none) and total tokens/s (non-padding
tokens fed to the policy); peak RSS of the configuration's process; model FLOPs/s as a fraction
of this machine's fp32 matmul peak (measured here, same thread count). Model FLOPs per step =
6 x tokens x (non-embedding parameters + the LM head's hidden x vocab, not for bt), the same
formula for both sides, so a side that skips work (padding, logits nobody needs) is not
credited for it. Prints one table and, with --json, writes it.
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
HH_RLHF = os.path.join(REPO, "..", "shared", "data", "hh-rlhf", "harmless-base-test-part1.jsonl.gz")
WORKLOADS = ("sft", "dpo", "bt")
CONFIGS = {w: ("ours", "ours-packed", "trl-default", "trl-best") for w in ("sft", "dpo", "bt")}


def trl_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("trl") is not None


def build_model(args, folder: str) -> None:
    """Random-init Qwen2 (causal LM and, from the same weights plus a seeded score head, a
    one-label reward model) saved to folder/lm and folder/rm: both sides load the same bytes."""
    import torch
    from transformers import AutoModelForSequenceClassification, Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         num_key_value_heads=max(1, args.hidden // 128), max_position_embeddings=max(args.max_length, 512),
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    torch.manual_seed(args.seed)
    Qwen2ForCausalLM(config).save_pretrained(os.path.join(folder, "lm"))
    torch.manual_seed(args.seed + 1)
    rm = AutoModelForSequenceClassification.from_pretrained(os.path.join(folder, "lm"), num_labels=1,
                                                            dtype=torch.float32)
    rm.config.pad_token_id = 0
    rm.save_pretrained(os.path.join(folder, "rm"))


def tokenized_rows(workload: str, tokenizer, max_length: int, count: int) -> list[dict]:
    """The first `count` usable rows of the hh-rlhf slice, tokenised as train.py does."""
    from collate_functions import tokenize_preference_rows, tokenize_sft_rows
    from custom_dataset import CustomDataset
    from reward_model import trim_pairs_to_reply_end
    kind = "sft" if workload == "sft" else "dpo"
    # Tokenising all 1,600 pairs takes a while: read a margin over `count` first (tokenisation
    # drops rows whose reply is truncated away), and everything only if that is not enough.
    for length in (4 * count + 64, None):
        ds = CustomDataset(HH_RLHF, "train", kind, skip_bad_rows=True, length=length)
        if workload == "sft":
            rows, _ = tokenize_sft_rows(ds, tokenizer, max_length)
        else:
            # Cut after the reply's end-of-turn token, so every token TRL sees as completion is labelled here too.
            rows = trim_pairs_to_reply_end(tokenize_preference_rows(ds, tokenizer, max_length)[0])
        if len(rows) >= count:
            break
    if len(rows) < count:
        raise SystemExit(f"The data set has {len(rows)} usable rows; {count} are needed (fewer --steps or --batch-size).")
    return rows[:count]


def our_config(workload: str, args, packing: bool) -> dict:
    from flags import parse_config
    argv = ["--training-type", workload, "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--seed", str(args.seed)]
    argv.append("--packing" if packing else "--no-packing")
    return parse_config(argv)[0]


def counts_of(batch) -> tuple[int, int]:
    """(supervised tokens, real tokens) of one of our batches."""
    from collate_functions import PreferenceBatch
    supervised = int((batch.labels[:, 1:] != -100).sum())
    if isinstance(batch, PreferenceBatch) and batch.labels is None:
        supervised = 0
    return supervised, int(batch.attention_mask.sum())


def run_ours(workload: str, variant: str, args, folder: str) -> dict:
    import torch

    from collate_functions import PreferenceCollator, SFTCollator
    from models import load_causal_lm, load_reward_model, load_tokenizer
    from module import PostTrainingModule, adamw
    from reference_logps import precompute_reference_logps
    tokenizer = load_tokenizer(os.path.join(REPO, "embedded", "model"))
    steps = args.warmup + args.steps
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size)
    config = our_config(workload, args, packing=variant == "ours-packed")
    model = (load_reward_model(os.path.join(folder, "rm"), tokenizer.pad_token_id) if workload == "bt"
             else load_causal_lm(os.path.join(folder, "lm")))
    module = PostTrainingModule(config, model=model, tokenizer=tokenizer)
    if workload == "dpo":
        precompute_reference_logps(model, {"train": type("Rows", (), {"dataset": rows})()}, args.batch_size,
                                   tokenizer.pad_token_id)
    pack = {"pack_capacity": args.max_length} if config["packing"] else {}
    collator = (SFTCollator if workload == "sft" else PreferenceCollator)(tokenizer.pad_token_id, args.batch_size, **pack)
    opt = adamw(model.parameters(), args.lr, 0.0)
    model.train()
    times, cpu_times, supervised, total, losses = [], [], [], [], []
    for i in range(steps):
        step = collator(rows[i * args.batch_size:(i + 1) * args.batch_size])
        start, cpu_start = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_value, _ = module.accumulate_gradients(step)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        sup, tot = (sum(c) for c in zip(*(counts_of(mb) for mb in step.micro_batches)))
        supervised.append(0 if workload == "bt" else sup)
        total.append(tot)
        losses.append(loss_value)
    return {"times": times, "cpu_times": cpu_times, "supervised": supervised, "total": total, "losses": losses,
            "loss_check": None}


def trl_batch_to_ours(workload: str, batch: dict):
    """TRL's collated batch as our batch type, the same tensors."""
    import torch

    from collate_functions import PreferenceBatch, SFTBatch
    if workload == "sft":
        position_ids = batch.get("position_ids")
        attention_mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        return SFTBatch(batch["input_ids"], attention_mask, batch["labels"], None, position_ids)
    if workload == "dpo":
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        ref = None
        if "ref_chosen_logps" in batch:
            ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).float()
        return PreferenceBatch(batch["input_ids"], batch["attention_mask"], labels, ref)
    return PreferenceBatch(batch["input_ids"], batch["attention_mask"], batch["input_ids"])


def run_trl(workload: str, variant: str, args, folder: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    import logprobs
    import trl
    from models import load_causal_lm, load_reward_model, load_tokenizer
    from module import PostTrainingModule
    tokenizer = load_tokenizer(os.path.join(REPO, "embedded", "model"))
    steps = args.warmup + args.steps
    best = variant == "trl-best"
    # Packed rows hold more conversations each: give every configuration enough rows.
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size * (4 if best and workload == "sft" else 1))
    common = dict(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=args.batch_size,
                  max_steps=steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", report_to="none", save_strategy="no",
                  logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=args.seed, max_length=args.max_length,
                  disable_tqdm=True, bf16=False, activation_checkpointing=not best)
    if workload == "sft":
        data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        model = load_causal_lm(os.path.join(folder, "lm"))
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(packing=best, padding_free=best, **common),
                                 train_dataset=data, processing_class=tokenizer)
    elif workload == "dpo":
        items = []
        for r in rows:
            start = next(i for i, label in enumerate(r["chosen_labels"]) if label != -100)
            assert r["chosen_input_ids"][:start] == r["rejected_input_ids"][:start]
            items.append({"prompt_ids": r["chosen_input_ids"][:start], "chosen_ids": r["chosen_input_ids"][start:],
                          "rejected_ids": r["rejected_input_ids"][start:]})
        model = load_causal_lm(os.path.join(folder, "lm"))

        class PreTokenizedDPOTrainer(trl.DPOTrainer):
            """TRL 1.16's DPOTrainer always tokenises text columns; these rows are tokenised already."""

            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset
        trainer = PreTokenizedDPOTrainer(model=model, args=trl.DPOConfig(beta=0.1, precompute_ref_log_probs=best, **common),
                                 train_dataset=Dataset.from_list(items), processing_class=tokenizer)
    else:
        items = [{"chosen_ids": r["chosen_input_ids"], "rejected_ids": r["rejected_input_ids"]} for r in rows]
        model = load_reward_model(os.path.join(folder, "rm"), tokenizer.pad_token_id)
        trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common),
                                    train_dataset=Dataset.from_list(items), processing_class=tokenizer)
    # The same rows in the same order as our side (TRL's packing reorders its packed rows itself).
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)

    # Loss check: TRL's loss and ours on TRL's first batch, the same tensors and weights.
    batch = next(iter(trainer.get_train_dataloader()))
    config = our_config(workload, args, packing=False)
    ours = PostTrainingModule(config, model=trainer.model, tokenizer=tokenizer)
    our_batch = trl_batch_to_ours(workload, batch)
    reference_error = None
    with torch.no_grad():
        if workload == "dpo" and not best:
            # TRL 1.16 re-loads the reference from the policy's folder, and that copy scores the completions
            # up to ~1e-2 nats a sequence apart from the policy on equal weights (the policy agrees with a
            # float64 log-softmax), so its step-0 loss is not ln 2. Both losses take TRL's reference
            # log-probs; the gap between them and the policy's own is recorded.
            trl_ref = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, dict(batch))).float()
            policy = logprobs.sequence_logps(trainer.model, our_batch.input_ids, our_batch.attention_mask,
                                             our_batch.labels)
            reference_error = float((trl_ref - policy).abs().max())
            our_batch.ref_logps = trl_ref
        trl_loss = float(trainer.compute_loss(trainer.model, dict(batch)))
        our_loss = float(ours.compute(our_batch)[0])
    del ours

    times, cpu_times, supervised, total, start = [], [], [], [], [0.0, 0.0]
    real_compute_loss = trainer.compute_loss

    def counting_compute_loss(model, inputs, *a, **k):
        if model.training:
            if "attention_mask" in inputs:
                total.append(int(inputs["attention_mask"].sum()))
            else:                                    # padding-free: one row, no padding
                total.append(int(inputs["input_ids"].numel()))
            if workload == "sft":
                supervised.append(int((inputs["labels"][:, 1:] != -100).sum()))
            elif workload == "dpo":
                supervised.append(int(inputs["completion_mask"][:, 1:].sum()))
            else:
                supervised.append(0)
        return real_compute_loss(model, inputs, *a, **k)
    trainer.compute_loss = counting_compute_loss

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            start[:] = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - start[0])
            cpu_times.append(time.process_time() - start[1])
    trainer.add_callback(Timer())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": times, "cpu_times": cpu_times, "supervised": supervised, "total": total, "losses": losses,
            "loss_check": {"trl": trl_loss, "ours": our_loss, "trl_reference_max_abs_error": reference_error}}


def worker(spec: dict) -> dict:
    """One configuration in this process: its figures and its peak RSS."""
    import torch
    torch.set_num_threads(spec["args"]["threads"])
    args = argparse.Namespace(**spec["args"])
    run = run_ours if spec["variant"].startswith("ours") else run_trl
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


def matmul_peak_flops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Best fp32 n x n matmul rate on this machine with `threads` threads (FLOP/s)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
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
    flops = 6 * sum(tot) * (dense + (0 if workload == "bt" else head))
    check = result["loss_check"]
    return {"workload": workload, "config": variant, "steps_timed": len(times),
            "median_step_s": statistics.median(times) if times else float("nan"),
            # CPU time of the process: with one thread, what the step costs whatever else the machine runs.
            "median_step_cpu_s": statistics.median(result["cpu_times"][timed]) if times else float("nan"),
            "supervised_tokens_per_s": sum(sup) / seconds if workload != "bt" and seconds else None,
            "total_tokens_per_s": sum(tot) / seconds if seconds else float("nan"),
            "peak_rss_mib": result["peak_rss_mib"], "flops_fraction_of_peak": flops / seconds / peak if seconds else None,
            "loss_check": check, "first_loss": result["losses"][0] if result["losses"] else None}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workloads", default="sft,dpo,bt", help="comma-separated: sft, dpo, bt")
    p.add_argument("--sides", default="ours,trl", help="ours, trl, or both (trl needs bench/requirements.txt)")
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    p.add_argument("--batch-size", type=int, default=4, help="rows (SFT) or pairs (DPO, BT) per step")
    p.add_argument("--max-length", type=int, default=512, help="tokens per conversation (and per packed row)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, constant")
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
    folder = tempfile.mkdtemp(prefix="bench-model-")
    build_model(args, folder)
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "lm"))
    head = lm.config.hidden_size * lm.config.vocab_size
    dense = sum(p.numel() for p in lm.parameters()) - head          # tied: the embedding is the head
    del lm
    peak = matmul_peak_flops(args.threads)
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
            table.append(row)
            print(f"done: {workload} {variant} ({row['median_step_s']:.2f} s/step)", file=sys.stderr, flush=True)
    print_table(table, args, peak)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                       "matmul_peak_gflops": peak / 1e9, "rows": table, "ratios": ratios(table)}, f, indent=1)
    return 0


def ratios(table: list[dict]) -> dict:
    """Ours / TRL total tokens/s: ours unpacked and packed against TRL's default and TRL's best, per workload."""
    out = {}
    for workload in WORKLOADS:
        rows = {r["config"]: r for r in table if r["workload"] == workload}
        for our_config in ("ours", "ours-packed"):
            for trl_config in ("trl-default", "trl-best"):
                if our_config in rows and trl_config in rows:
                    out[f"{workload}: {our_config} / {trl_config}"] = (rows[our_config]["total_tokens_per_s"]
                                                                      / rows[trl_config]["total_tokens_per_s"])
    return out


def print_table(table: list[dict], args, peak: float) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads); batch {args.batch_size}, "
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
    for name, value in ratios(table).items():
        print(f"{name} (total tokens/s): {value:.2f}x")


if __name__ == "__main__":
    sys.exit(main())

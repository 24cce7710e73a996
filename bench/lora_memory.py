"""Peak RSS of our DPO step with LoRA adapters (--lora-r) against the full-weight step, on a real model.

Each configuration runs in its own process, so each peak RSS is its own.

    python bench/lora_memory.py --threads 1 --json lora-memory.json        # SmolLM2-135M-Instruct, 2 pairs x 256 tokens
    MALLOC_MMAP_THRESHOLD_=65536 python bench/lora_memory.py --threads 1    # the live tensors' peak (see below)
    python bench/lora_memory.py --model embedded/model --max-length 64 --steps 1 --configs full,lora   # tiny

The step is train.py's DPO step as bench/run.py runs it (PostTrainingModule.training_step under a
lightning.Trainer on CPU: the policy's log-probs -> sigmoid DPO loss (beta 0.1) -> backward -> clip ->
fused AdamW), --steps steps on the same first --batch-size pairs of the hh-rlhf slice in
../shared/data (so every step has the same activations, and the steps after the first hold AdamW's
state too), tokenised with the model's own chat template and cut to --max-length tokens, fp32. Every
configuration gets the same rows in the same order, the same batch and length, and train.py's
defaults otherwise (packing on, dropout off), and sets up its model and reference as train.py's
fit() does:

  full            every weight trains; reference log-probs precomputed before training with the
                  policy itself (train.py's default, --precompute-ref-log-probs): no reference model
                  in memory while training. The fair full-weight baseline.
  full-live-ref   every weight trains; --no-precompute-ref-log-probs: a frozen reference copy is
                  loaded beside the policy and scored at every step (TRL DPOTrainer's default).
  lora            --lora-r R (default 16, alpha 16) on the default targets (every attention and MLP
                  projection); reference log-probs precomputed with the adapters disabled.
  lora-live-ref   the same with --no-precompute-ref-log-probs: the reference is scored live by the
                  policy inside peft's disable_adapter(); no copy is loaded either.

Where LoRA saves memory: the frozen base gets no gradients and AdamW holds its two moments only
for the adapters; and no reference copy exists in either LoRA configuration.

Figures per configuration: parameters that train and in all (peft's adapters included), AdamW's
state after training (MiB), peak RSS of the process before the first step (model loaded and
reference log-probs precomputed) and at the end (ru_maxrss: the process's high-water mark, file-
backed pages of the loaded weights included), the median step time, and as a correctness check
which parameter tensors changed in training (checksums before and after, in chunks so no copy of
the weights is held): under LoRA only adapter tensors may change. Ratios: each LoRA configuration's
peak RSS over `full`'s (and lora-live-ref's over full-live-ref's). Peak RSS does not depend on
the CPU share; step times do.

Peak RSS is also the allocator's: glibc raises its mmap threshold as large blocks are freed, so
later tensors come from its heap, which keeps the freed pages. Under LoRA that left 0.5 GiB more
RSS after the same forward pass than full training did (bench/README.md). With
MALLOC_MMAP_THRESHOLD_=65536 in the environment (the workers inherit it) every block over 64 KiB
is mapped apart and returned when freed, and the peak follows the live tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

CONFIGS = {     # name -> (LoRA adapters, reference log-probs precomputed)
    "full": (False, True),
    "full-live-ref": (False, False),
    "lora": (True, True),
    "lora-live-ref": (True, False),
}


def checksums(model) -> dict[str, float]:
    """{parameter name: float64 sum of its values}, summed in 1M-element chunks (no copy of the weights)."""
    import torch
    with torch.no_grad():
        return {name: sum(float(c.double().sum()) for c in p.detach().reshape(-1).split(1 << 20))
                for name, p in model.named_parameters()}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: KiB


def dpo_config(spec: dict):
    """train.py's resolved config (config.Config) for one configuration."""
    from flags import parse_config, resolve
    lora, precompute = CONFIGS[spec["config"]]
    argv = ["--training-type", "dpo", "--model-name", spec["model"], "--max-length", str(spec["max_length"]),
            "--batch-size", str(spec["batch_size"]), "--lr", str(spec["lr"]), "--seed", str(spec["seed"])]
    argv += ["--lora-r", str(spec["lora_r"])] if lora else []
    argv += [] if precompute else ["--no-precompute-ref-log-probs"]
    argv += ["--activation-checkpointing"] if spec["activation_checkpointing"] else []
    return resolve(parse_config(argv)[0])


def worker(spec: dict) -> dict:
    """One configuration in this process: its figures and its peak RSS."""
    import contextlib

    import lightning as L
    import torch

    import adapters
    from bench.workloads import fit_timed
    from bench.workloads import tokenized_rows
    from collate_functions import PreferenceCollator
    from models import load_causal_lm, load_tokenizer
    from module import PostTrainingModule
    from reference_logps import precompute_reference_logps
    torch.set_num_threads(spec["threads"])
    imported = peak_rss_mib()       # torch, lightning, transformers, peft: the same in every configuration
    L.seed_everything(spec["seed"], verbose=False)
    c = dpo_config(spec)
    tokenizer = load_tokenizer(c.model.model_name)
    # The same pairs at every step (copies: each row carries its own reference log-probs), so every step
    # has the same activations and the steps after the first hold AdamW's state too: the steady state.
    first = tokenized_rows("dpo", tokenizer, c.data.max_length, c.optim.batch_size)
    rows = [dict(row) for _ in range(spec["steps"]) for row in first]
    pack = {"pack_capacity": c.data.max_length} if c.data.packing else {}
    loader = torch.utils.data.DataLoader(rows, batch_size=c.optim.batch_size, shuffle=False,
                                         collate_fn=PreferenceCollator(tokenizer.pad_token_id, c.optim.batch_size, **pack))
    # As train.py's fit(): adapters first, then the reference (precomputed, a frozen copy, or none under LoRA).
    model = load_causal_lm(c.model.model_name)
    if c.lora.lora_r:
        adapters.add_adapters(model, c.lora, "dpo")
    reference = None
    if c.dpo.precompute_ref_log_probs:
        with adapters.reference_mode(model) if c.lora.lora_r else contextlib.nullcontext(model) as ref:
            precompute_reference_logps(ref, {"train": loader}, c.optim.batch_size, tokenizer.pad_token_id,
                                       pack.get("pack_capacity"))
    elif not c.lora.lora_r:
        reference = load_causal_lm(c.model.model_name)
    module = PostTrainingModule(c, model=model, tokenizer=tokenizer, reference=reference)
    before = checksums(model)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["peak_rss_before_training_mib"] = peak_rss_mib()

        def on_train_end(self, trainer, pl_module):
            state = trainer.optimizers[0].state
            seen["optimizer_state_mib"] = sum(t.numel() * t.element_size() for s in state.values()
                                              for t in s.values() if torch.is_tensor(t)) / 2 ** 20
            seen["optimizer_state_params"] = sorted(names[id(p)] for p in state)
    run = fit_timed(module, loader, spec["steps"], callbacks=[Probe()])
    peak = peak_rss_mib()
    after = checksums(model)
    changed = sorted(n for n in before if before[n] != after[n])
    params = dict(model.named_parameters())
    return {"config": spec["config"], "peak_rss_mib": peak, "rss_after_imports_mib": imported, **seen,
            "times": run["times"], "losses": run["losses"],
            "trainable_params": sum(p.numel() for p in params.values() if p.requires_grad),
            "total_params": sum(p.numel() for p in params.values()),
            "trainable_names": sorted(n for n, p in params.items() if p.requires_grad),
            "changed_names": changed, "reference_copy_loaded": reference is not None,
            "tokens_per_step": tokens_per_step(loader)}


def tokens_per_step(loader) -> list[int]:
    """The real (non-padding) tokens of each step's sequences: the same in every configuration."""
    from bench.workloads import counts_of
    return [sum(counts_of(mb)[1] for mb in step.micro_batches) for step in loader]


def summarise(result: dict, full: dict | None) -> dict:
    adapter = [n for n in result["changed_names"] if "lora_" in n]
    row = {k: result[k] for k in ("config", "trainable_params", "total_params", "optimizer_state_mib",
                                  "rss_after_imports_mib", "peak_rss_before_training_mib", "peak_rss_mib",
                                  "reference_copy_loaded")}
    row.update(median_step_s=statistics.median(result["times"]) if result["times"] else None,
               first_loss=result["losses"][0] if result["losses"] else None,
               changed_tensors=len(result["changed_names"]), changed_adapter_tensors=len(adapter),
               optimizer_state_tensors=len(result["optimizer_state_params"]),
               optimizer_state_adapter_only=all("lora_" in n for n in result["optimizer_state_params"]),
               peak_rss_vs_full=result["peak_rss_mib"] / full["peak_rss_mib"] if full else None)
    return row


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="what --model-name takes: a packaged short name, a Hugging Face folder or a .gguf file")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--lora-r", type=int, default=16, help="the adapters' rank (alpha stays train.py's 16)")
    p.add_argument("--steps", type=int, default=2,
                   help="optimizer steps per configuration, each on the same pairs (AdamW's state exists after the first)")
    p.add_argument("--batch-size", type=int, default=2, help="pairs per step")
    p.add_argument("--max-length", type=int, default=256, help="tokens per conversation (and per packed row)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="train.py's --activation-checkpointing in every configuration (off: train.py's default)")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (train.py's schedule)")
    p.add_argument("--seed", type=int, default=0, help="train.py's --seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--json", default=None, help="also write the rows (and each run's details) as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        with open(args.worker, encoding="utf-8") as f:
            spec = json.load(f)
        print("BENCH-RESULT " + json.dumps(worker(spec)))
        return 0
    configs = [x for x in args.configs.split(",") if x]
    if not configs or not set(configs) <= set(CONFIGS):
        raise SystemExit(f"--configs takes {', '.join(CONFIGS)} (got {args.configs}).")
    if args.lora_r < 1:
        raise SystemExit(f"--lora-r must be at least 1 (got {args.lora_r}).")
    import torch

    from bench.run import run_worker
    from models import pretrained_path
    args.threads = args.threads or torch.get_num_threads()
    pretrained_path(args.model)         # a packaged model's GGUF is dequantized here, once, not in a worker
    results = {}
    for config in configs:
        spec = {**{k: v for k, v in vars(args).items() if k not in ("json", "worker", "configs")}, "config": config}
        results[config] = run_worker(__file__, spec, config, args.threads)
        print(f"done: {config} (peak RSS {results[config]['peak_rss_mib']:.0f} MiB)", file=sys.stderr, flush=True)
    table = [summarise(r, results.get("full")) for r in results.values()]
    print_table(table, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                       "rows": table, "runs": results}, f, indent=1)
    return 0


def print_table(table: list[dict], args) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)
    print(f"\n{args.model}: DPO, batch {args.batch_size} pairs, max length {args.max_length}, {args.steps} steps on "
          f"the same pairs, {args.threads} threads, activation checkpointing "
          f"{'on' if args.activation_checkpointing else 'off'}; LoRA r={args.lora_r}")
    print("| config | reference | parameters that train | AdamW state (MiB) | RSS after imports (MiB) | peak RSS before step 1 (MiB) "
          "| peak RSS (MiB) | vs full | median step (s) | tensors changed (adapters) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        reference = ("frozen copy, live" if r["reference_copy_loaded"] else
                     "precomputed" if not r["config"].endswith("live-ref") else "adapters disabled, live")
        print(f"| {r['config']} | {reference} | {r['trainable_params']:,} of {r['total_params']:,} "
              f"({r['trainable_params'] / r['total_params']:.2%}) | {fmt(r['optimizer_state_mib'], '.0f')} "
              f"| {r['rss_after_imports_mib']:.0f} "
              f"| {r['peak_rss_before_training_mib']:.0f} | {r['peak_rss_mib']:.0f} | {fmt(r['peak_rss_vs_full'], '.2f')} "
              f"| {fmt(r['median_step_s'], '.2f')} | {r['changed_tensors']} ({r['changed_adapter_tensors']}) |")
    rows = {r["config"]: r for r in table}
    for lora, full in (("lora", "full"), ("lora-live-ref", "full-live-ref"), ("lora", "full-live-ref")):
        if lora in rows and full in rows:
            ratio = rows[lora]["peak_rss_mib"] / rows[full]["peak_rss_mib"]
            print(f"{lora} / {full} peak RSS: {ratio:.2f}x (at most 0.5x: {'yes' if ratio <= 0.5 else 'no'})")


if __name__ == "__main__":
    sys.exit(main())

"""--compile against eager: median training-step time and the first (compiling) step's time.

    python bench/compile.py --threads 1                      # bundled model and the Qwen-vocabulary model
    python bench/compile.py --models bundled --steps 4       # quicker

The step is train.py's SFT step as bench/run.py times it (PostTrainingModule.training_step under
a lightning.Trainer: compute -> backward -> clip -> fused AdamW) on the hh-rlhf slice in ../shared/data, packed (train.py's
default), batch --batch-size, rows up to --max-length; each step takes the next rows, so
lengths vary from step to step as in training. Models: the bundled tiny Qwen2 (embedded/model:
vocabulary 1,129, hidden 128) and bench/run.py's random-init Qwen2 with Qwen2.5's 151,936-token
vocabulary (hidden 256, 4 layers). Each (model, eager/compiled) runs in its own process with
an empty inductor cache, so the first step's time includes a cold compile. Both modes' medians
are over the same steps: those after --warmup in which the compiled run compiled nothing (a
padded micro-batch after packed ones, its attention mask a tensor instead of None, compiles a
second graph); the time of the steps that compiled is shown apart, with the graph count.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def worker(spec: dict) -> dict:
    import lightning as L
    import torch
    from torch._dynamo.utils import counters

    from bench import workloads
    from collate_functions import SFTCollator
    from flags import parse_config, resolve
    from models import load_causal_lm, load_tokenizer
    from module import PostTrainingModule
    torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(os.path.join(REPO, "embedded", "model"))
    steps = spec["warmup"] + spec["steps"]
    rows = workloads.tokenized_rows("sft", tokenizer, spec["max_length"], steps * spec["batch_size"])
    argv = ["--max-length", str(spec["max_length"]), "--batch-size", str(spec["batch_size"]), "--lr", "1e-5"]
    config = resolve(parse_config(argv + (["--compile"] if spec["compile"] else []))[0])
    model = load_causal_lm(spec["model"])
    module = PostTrainingModule(config, model=model, tokenizer=tokenizer)
    collator = SFTCollator(tokenizer.pad_token_id, spec["batch_size"], pack_capacity=spec["max_length"])
    model.train()
    counters.clear()
    graphs, compiled = [0], []

    class Graphs(L.Callback):
        """Whether a step compiled a new graph."""
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            graphs[0] = counters["stats"]["unique_graphs"]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            compiled.append(counters["stats"]["unique_graphs"] > graphs[0])
    loader = torch.utils.data.DataLoader(rows, batch_size=spec["batch_size"], shuffle=False, collate_fn=collator)
    times = workloads.fit_timed(module, loader, steps, callbacks=[Graphs()])["times"]
    return {"first_s": times[0], "graphs": counters["stats"]["unique_graphs"], "times": times, "compiled": compiled}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="bundled,qwen-vocab", help="comma-separated: bundled, qwen-vocab")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them (the first compiles)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        with open(args.worker, encoding="utf-8") as f:
            print("BENCH-RESULT " + json.dumps(worker(json.load(f))))
        return 0
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1: the first step compiles.")
    from bench import run as bench_run
    from bench import workloads
    folder = workloads.scratch_folder("bench-compile-")
    paths = {"bundled": os.path.join(REPO, "embedded", "model")}
    if "qwen-vocab" in args.models:
        workloads.build_model(argparse.Namespace(model="random", vocab=151936, hidden=256, layers=4, max_length=args.max_length,
                                                 seed=0), folder)
        paths["qwen-vocab"] = os.path.join(folder, "lm")
    results = []
    for name in args.models.split(","):
        for compiled in (False, True):
            spec = {"model": paths[name], "compile": compiled, "steps": args.steps, "warmup": args.warmup,
                    "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads}
            result = bench_run.run_worker(__file__, spec, f"{name} compile={compiled}", args.threads,
                                          TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-", dir=folder))
            row = {"model": name, "compile": compiled, **result}
            results.append(row)
            print(f"done: {name} compile={compiled}", file=sys.stderr, flush=True)
        # Both modes timed on the same steps (the same rows): after the warm-up, and not a step
        # that compiled a graph (a padded micro-batch after packed ones compiles a second one).
        eager, comp = results[-2:]
        kept = [i for i in range(args.warmup, len(eager["times"])) if not comp["compiled"][i]]
        for r in (eager, comp):
            r["median_s"] = statistics.median(r["times"][i] for i in kept) if kept else float("nan")
            r["timed_steps"] = kept
            r["compile_steps_s"] = sum(t for t, c in zip(r["times"], r["compiled"]) if c)
    print(f"SFT step, packed, batch {args.batch_size}, max length {args.max_length}, {args.threads} thread(s); "
          f"median over the {len(results[0]['timed_steps'])} of {args.steps} timed steps that compiled nothing")
    print("| model | mode | median step (s) | first step (s) | steps that compiled (s, all) | graphs |\n"
          "|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {'compiled' if r['compile'] else 'eager'} | {r['median_s']:.3f} | {r['first_s']:.2f} | "
              f"{r['compile_steps_s']:.1f} | {r['graphs'] if r['compile'] else '-'} |")
    if args.json:
        workloads.write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

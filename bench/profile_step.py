"""Where our training step's CPU time goes: torch.profiler over the timed steps of bench/run.py's
`ours` configurations (train.py's step under a lightning.Trainer), operators by self CPU time.

    python bench/profile_step.py --model smollm2 --workloads sft --precision bf16-mixed --threads 2
    python bench/profile_step.py --model smollm2 --workloads dpo --threads 2 --top 15

Takes bench/run.py's flags (model, precision, batch, length, --warmup untimed and --steps
profiled steps) and --top. Prints, per workload, the top operators with their share of the
profiled steps' self CPU time and their time a step; the matmuls (aten::mm, addmm, bmm, and
the attention kernel) are summed on a line of their own, since their share is the step's
ceiling on the matmul peak.
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from bench.run import parse_args, run_ours  # noqa: E402
from bench.workloads import build_model, scratch_folder  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::linear_backward")


def profile(workload: str, args, folder: str) -> list[tuple[str, float, float]]:
    """(operator, share of self CPU time, ms a step) of the profiled steps, most first."""
    import lightning as L
    import torch
    from torch.profiler import ProfilerActivity

    prof = torch.profiler.profile(activities=[ProfilerActivity.CPU])

    class Window(L.Callback):       # the timed steps only: the warm-up ones fill caches and the allocator
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                prof.start()

        def on_train_end(self, trainer, pl_module):
            prof.stop()
    run_ours(workload, "ours-packed", args, folder, callbacks=[Window()])
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = sorted(((e.key, e.self_cpu_time_total / total, e.self_cpu_time_total / 1e3 / args.steps) for e in events),
                  key=lambda r: -r[1])
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--top", type=int, default=12, help="operators listed a workload")
    known, rest = own.parse_known_args(sys.argv[1:] if argv is None else argv)
    top, args = known.top, parse_args(rest)
    import torch
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    folder = scratch_folder("bench-profile-")
    build_model(args, folder)
    for workload in [w for w in args.workloads.split(",") if w]:
        rows = profile(workload, args, folder)
        print(f"\n{workload}, {args.model}, {args.precision}, batch {args.batch_size} x {args.max_length}, "
              f"{args.threads} threads, {args.steps} profiled steps")
        print("| operator | share of self CPU | ms a step |\n|---|---|---|")
        for name, share, ms in rows[:top]:
            print(f"| {name} | {share:.1%} | {ms:.0f} |")
        matmul = [r for r in rows if r[0] in MATMULS]
        print(f"| all matmuls ({', '.join(sorted({r[0] for r in matmul}))}) | {sum(r[1] for r in matmul):.1%} | "
              f"{sum(r[2] for r in matmul):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

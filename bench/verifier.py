"""Adaptive-compute verification against a fixed K: what the seed's modification saves.

    python bench/verifier.py --model runs/genrm-demo                       # bundled held-out problems
    python bench/verifier.py --model runs/genrm-demo --num-problems 100 --json bench-verifier.json

Each held-out problem of the bundled `problems/` test split gives two solutions to verify: its
correct one (label Yes) and its incorrect one (label No). Every solution is scored twice with
the GenRM-CoT verifier (extension/verifier.py, eqs. 9-10): with a fixed K (--fixed-k, 32 as
the seed's upper bound) and adaptively (rounds of --step rationales from --k-min up to
--k-max, stopping once the variance of the scores is below --tau), with the same sampling
settings and the same seed per solution (the fixed run draws its K in one batch, the adaptive
one a new seed a round, so their rationales differ). Prints one table: rationales sampled per solution, accuracy at threshold 0.5, AUROC (the chance
that a correct solution outscores an incorrect one, ties half), and wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the verifier: model folder, Hub name or train.py run")
    p.add_argument("--problems", default=None, help="JSONL of question/correct_solution/incorrect_solution rows "
                                                    "(default: the bundled problems test split)")
    p.add_argument("--num-problems", type=int, default=50, help="first N problems (2N solutions)")
    p.add_argument("--fixed-k", type=int, default=32)
    p.add_argument("--k-min", type=int, default=8)
    p.add_argument("--k-max", type=int, default=32)
    p.add_argument("--step", type=int, default=8)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--max-new-tokens", type=int, default=160, help="rationale length budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm

    from extension.selection import auroc
    from extension.verifier import adaptive_verify, compute_verifier_scores
    from flags import EMBEDDED_DATA
    from models import load_trained
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = args.problems or str(EMBEDDED_DATA["sft_verifier"] / "test.jsonl")
    with open(path, encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()][:args.num_problems]
    items = [(r["question"], r[key], key == "correct_solution") for r in problems
             for key in ("correct_solution", "incorrect_solution")]
    model, tokenizer = load_trained(args.model)

    def sampler(question, solution, seed):
        draws = iter(range(seed, seed + 1000))   # a new seed a round: rounds sample new rationales
        return lambda n: compute_verifier_scores(model, tokenizer, question, solution, k=n, seed=next(draws),
                                                 max_new_tokens=args.max_new_tokens)

    methods = {f"fixed K={args.fixed_k}": dict(k_min=args.fixed_k, k_max=args.fixed_k, step=1, tau=-1.0),
               f"adaptive K={args.k_min}..{args.k_max} step {args.step}, tau {args.tau}":
                   dict(k_min=args.k_min, k_max=args.k_max, step=args.step, tau=args.tau)}
    table = []
    for name, setting in methods.items():
        start, results = time.perf_counter(), []
        for i, (question, solution, _) in enumerate(tqdm(items, desc=name, unit="solution")):
            results.append(adaptive_verify(sampler(question, solution, args.seed + 1000 * i), **setting))
        seconds = time.perf_counter() - start
        scores, labels = [r.score for r in results], [y for _, _, y in items]
        table.append({"method": name, "solutions": len(items), "mean_k": sum(r.k for r in results) / len(results),
                      "accuracy": sum((s > 0.5) == y for s, y in zip(scores, labels)) / len(items),
                      "auroc": auroc(scores, labels), "seconds": seconds})
    print("\n| method | solutions | mean K | accuracy | AUROC | wall time (s) |\n|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['method']} | {row['solutions']} | {row['mean_k']:.1f} | {row['accuracy']:.3f} | "
              f"{row['auroc']:.3f} | {row['seconds']:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

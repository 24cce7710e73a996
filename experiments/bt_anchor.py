"""The bt anchor over several seeds: the real preference run's anchor stage (MiniLM bt on the
whole hh-rlhf harmless-base slice, train.py's own 10% test split), once a seed, to see whether
its accuracy beats the 40-line loop's 61.4-62.4% beyond the spread a single seed leaves.

    python experiments/bt_anchor.py --seeds 42 1 2 3 --out runs/bt-anchor     # ~4 min a seed
    python experiments/bt_anchor.py --seeds 42 1 --max-length 256 --epochs 1 --out runs/bt-anchor-256
    python experiments/bt_anchor.py --seeds 42 1 --train-args=--no-disable-dropout --out runs/bt-anchor-dropout
    python experiments/bt_anchor.py --validation --epochs 4 --out runs/bt-anchor-val-4ep   # choose a variant
    python experiments/bt_anchor.py --small --seeds 42 --out /tmp/bt-anchor    # a few rows

`--validation` trains and scores on the anchor's training pairs only: train.py's own 10% split
of them is the validation part, so a variant (epochs, length, flags) is chosen there and only
the chosen one is run on the 160 test pairs.

Each seed is one train.py stage (reused when finished); the seed sets the score head's
initialisation, the data order and dropout, not the split (data_files.HELDOUT_FRACTION's
constant seed), so every seed is tested on the same 160 pairs, where one accuracy's interval is
about +-0.075. Writes anchor.json (every seed's accuracy, interval, wall time and command; the
mean over seeds) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.real_prefs import (DATA_PATH, SETTINGS, anchor_source, bt_command, common_args, git_commit,  # noqa: E402
                                    pair_accuracy)
from experiments.stages import run_stage  # noqa: E402


def training_part(source: str, folder: str) -> str:
    """`source`'s training split (what train.py trains on when it holds out its test rows)
    written as the whole of `folder`, whose own held-out split then validates."""
    from data_files import load_splits, pick_split
    rows = pick_split(load_splits(source), "train", "bt", source)
    storage.write_text_atomic(storage.join(folder, "train.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    p.add_argument("--out", default="runs/bt-anchor")
    p.add_argument("--small", action="store_true", help="the small setting: a few rows, one step")
    p.add_argument("--max-length", type=int, default=None, help="tokens a pair; None: the setting's, 128")
    p.add_argument("--epochs", type=int, default=None, help="epochs; None: the setting's, 2")
    p.add_argument("--validation", action="store_true",
                   help="hold the test pairs out: train on the training pairs' 90%% and score their other 10%%")
    p.add_argument("--train-args", default="", help="more train.py flags for every seed, as one argument: --train-args=--no-disable-dropout")
    args = p.parse_args(argv)
    s = SETTINGS["small" if args.small else "real"]
    out = args.out if "://" in args.out else os.path.abspath(args.out)
    from data_files import load_splits
    source = anchor_source(list(next(iter(load_splits(DATA_PATH).values())))[:s["rows"]], s, out)
    if args.validation:
        source = training_part(source, storage.join(out, "data", "anchor-train"))
    seeds = {}
    for seed in args.seeds:
        name = f"bt_anchor_seed{seed}"
        command = bt_command("minilm", source, name, s, ["--skip-bad-rows", *common_args(out, seed, args.train_args)],
                             max_length=args.max_length, epochs=args.epochs)
        seconds = run_stage(name, command, out)
        result = pair_accuracy(storage.join(out, name), source, args.max_length or s["judge_max_length"], seed)
        seeds[seed] = {**{k: result[k] for k in ("accuracy", "ci95", "pairs")}, "seconds": seconds,
                       "command": command}
        print(f"[{name}] accuracy {result['accuracy']:.3f} [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}] "
              f"on {result['pairs']} pairs ({seconds / 60:.1f} min)", flush=True)
    mean = sum(v["accuracy"] for v in seeds.values()) / len(seeds)
    report = {"commit": git_commit(), "setting": "small" if args.small else "real",
              "scored_on": "validation" if args.validation else "test", "seeds": seeds,
              "mean_accuracy": mean}
    storage.write_text_atomic(storage.join(out, "anchor.json"), json.dumps(report, indent=1) + "\n")
    print(f"mean accuracy over seeds {sorted(seeds)}: {mean:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

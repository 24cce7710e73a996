"""The issue's 40-line baseline for `bt`, over several seeds: a plain PyTorch Bradley-Terry loop
on the pretrained MiniLM, on the same split and test pairs as experiments/bt_anchor.py, so that
the trainer's mean over seeds meets the loop's mean over the same seeds, not one lucky run.

    python experiments/bt_loop.py --seeds 42 1 2 3 --out runs/bt-loop      # ~9 min a seed on 2 CPU cores
    python experiments/bt_loop.py --small --seeds 42 --out /tmp/bt-loop     # a few rows

The loop as the issue gives it: the last 600 characters of each transcript (the replies differ
at the end), right-cut at 128 tokens, the mean of the encoder's last hidden states (as
sentence-transformers pools MiniLM) into a fresh linear head, -log sigmoid(r_chosen - r_rejected),
batch 16, AdamW at a constant 3e-5 (weight decay 0.01, torch's default), two epochs, no warm-up
and no clipping. The seed sets the head's initialisation and the data order. Writes loop.json
(each seed's test accuracy after each epoch, with its bootstrap interval) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.real_prefs import DATA_PATH, ENCODER, git_commit  # noqa: E402

CHARS, MAX_LENGTH, BATCH, LR, EPOCHS = 600, 128, 16, 3e-5, 2


def train_loop(train: list[dict], test: list[dict], seed: int, epochs: int = EPOCHS) -> list[dict]:
    """One seed of the plain loop -> each epoch's test accuracy and interval."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from models import pretrained_path
    from win_stats import bootstrap_interval
    folder = pretrained_path(ENCODER)
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    torch.manual_seed(seed)
    head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def reward(texts):
        batch = tokenizer([t[-CHARS:] for t in texts], truncation=True, max_length=MAX_LENGTH, padding=True,
                          return_tensors="pt")
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (encoder(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        return head(pooled).squeeze(-1)

    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=LR)
    order, rng, out = list(range(len(train))), random.Random(seed), []
    for epoch in range(epochs):
        encoder.train()
        rng.shuffle(order)
        for i in range(0, len(order), BATCH):
            rows = [train[j] for j in order[i:i + BATCH]]
            loss = -torch.nn.functional.logsigmoid(reward([r["chosen"] for r in rows])
                                                   - reward([r["rejected"] for r in rows])).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        encoder.eval()
        with torch.no_grad():
            right = [float(c > r) for i in range(0, len(test), 64) for c, r in
                     zip(reward([t["chosen"] for t in test[i:i + 64]]).tolist(),
                         reward([t["rejected"] for t in test[i:i + 64]]).tolist())]
        out.append({"epoch": epoch + 1, "accuracy": sum(right) / len(right),
                    "ci95": list(bootstrap_interval(right, seed=seed)), "pairs": len(right)})
        print(f"[seed {seed}] epoch {epoch + 1}: accuracy {out[-1]['accuracy']:.3f} on {len(right)} pairs", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    p.add_argument("--out", default="runs/bt-loop")
    p.add_argument("--small", action="store_true", help="32 training and 8 test pairs, one epoch")
    args = p.parse_args(argv)
    from data_files import load_splits, pick_split
    splits = load_splits(DATA_PATH)
    # train.py's split of the slice (bt_anchor's); pairs whose two sides are equal are no pair (--skip-bad-rows).
    train, test = ([r for r in pick_split(splits, part, "bt", DATA_PATH) if r["chosen"] != r["rejected"]]
                   for part in ("train", "test"))
    if args.small:
        train, test = train[:32], test[:8]
    seeds = {}
    for seed in args.seeds:
        began = time.perf_counter()
        epochs = train_loop(train, test, seed, 1 if args.small else EPOCHS)
        seeds[seed] = {"epochs": epochs, "seconds": time.perf_counter() - began}
    last = [v["epochs"][-1]["accuracy"] for v in seeds.values()]
    report = {"commit": git_commit(), "small": args.small, "train_pairs": len(train), "test_pairs": len(test),
              "recipe": {"chars": CHARS, "max_length": MAX_LENGTH, "batch": BATCH, "lr": LR}, "seeds": seeds,
              "mean_last_epoch_accuracy": sum(last) / len(last)}
    out = args.out if "://" in args.out else os.path.abspath(args.out)
    storage.write_text_atomic(storage.join(out, "loop.json"), json.dumps(report, indent=1) + "\n")
    print(f"mean over seeds {args.seeds}: {report['mean_last_epoch_accuracy']:.3f}; {storage.join(out, 'loop.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

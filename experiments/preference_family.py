"""The preference family's learning check on a real model: LoRA DPO, ORPO and SimPO from
SmolLM2-135M-Instruct on the hh-rlhf policy pairs, scored on pairs no run or choice saw.

    python experiments/preference_family.py --out runs/preference-family           # ~35 min on 2 CPU cores
    python experiments/preference_family.py --small --out /tmp/preference-family    # a few rows (CI)

The split is the real preference table's (experiments/real_prefs.py, seed 42): every method
trains on the policies' pairs and validates at its last step on their validation pairs; the
160 evaluation pairs are scored once, at the end. Every method starts from the same model with
the same fresh LoRA adapters (one seed), the same lr, steps and batch: the budget is shared,
not tuned per method.

Two held-out accuracies, each with a bootstrap 95% interval:
- DPO's (rewards/accuracies with a reference): the pairs whose log-ratio log p(chosen) -
  log p(rejected) rose above the start model's, i.e. beta log(pi / pi_ref) ranks chosen first;
- the reference-free one of SimPO and ORPO (their rewards are beta log p(y|x) / |y|): the
  pairs whose chosen reply has the higher mean token log-prob. The start model has one too,
  so "raised" is measured against it.
Writes results.md and results.json (every pair's log-probs and token counts) into --out.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.real_prefs import (DATA_PATH, LONG, SETTINGS, START, common_args, git_commit, last_scalar,  # noqa: E402
                                    pair_logps, split_pairs, write_split)
from experiments.stages import run_stage, write_report  # noqa: E402

# Each method's own flags, at the papers' settings: DPO's beta 0.1; ORPO's lambda 0.1 (Hong et
# al. 2024); SimPO's beta 2.0 and gamma 1.0 (Meng et al. 2024: beta 2.0 to 2.5, gamma / beta about 0.5).
METHODS = {
    "lora_dpo": ["--training-type", "dpo", "--dpo-loss", "sigmoid", "--beta", "0.1"],
    "lora_orpo": ["--training-type", "orpo", "--orpo-lambda", "0.1"],
    "lora_simpo": ["--training-type", "dpo", "--dpo-loss", "simpo", "--beta", "2.0", "--simpo-gamma", "1.0"],
}
# The shared budget. LoRA's lr is 10x the full-weight DPO lr of the real table (3e-5), the usual
# ratio for adapters; nothing here was chosen on the evaluation pairs.
BUDGET = {"real": dict(steps=60, batch_size=4, lr=3e-4, lora_r=16, lora_alpha=32),
          "small": dict(steps=1, batch_size=2, lr=3e-4, lora_r=4, lora_alpha=8)}
# Each bar of the issue: the column it reads and the value to pass.
BARS = {"lora_dpo": ("dpo_acc", 0.55), "lora_orpo": ("mean_logp_acc", 0.5), "lora_simpo": ("mean_logp_acc", 0.5)}


def method_command(name: str, folder: str, s: dict, b: dict, common: list[str]) -> list[str]:
    return [*METHODS[name], "--model-name", START, "--dataset-name", folder, "--max-length", str(s["max_length"]),
            "--batch-size", str(b["batch_size"]), "--lr", str(b["lr"]), "--max-steps", str(b["steps"]), *LONG,
            # Validate at the last step: --max-steps ends the run inside its first epoch.
            "--val-check-interval", str(b["steps"]),
            "--lora-r", str(b["lora_r"]), "--lora-alpha", str(b["lora_alpha"]), "--name", name, *common]


def accuracies(logps: list[tuple[float, float, int, int]], start: list[tuple[float, float, int, int]] | None,
               seed: int) -> dict:
    """Both held-out accuracies (module docstring) of one model's pair log-probs, each with its
    bootstrap interval; dpo_acc (against the start model's log-probs) is None without `start`."""
    from win_stats import bootstrap_interval
    mean_right = [float(c / nc > r / nr) for c, r, nc, nr in logps]
    out = {"mean_logp_acc": sum(mean_right) / len(mean_right), "mean_logp_ci95": list(bootstrap_interval(mean_right, seed=seed)),
           "dpo_acc": None, "dpo_ci95": None}
    if start is not None:
        dpo_right = [float(c - r > c0 - r0) for (c, r, _, _), (c0, r0, _, _) in zip(logps, start)]
        out.update(dpo_acc=sum(dpo_right) / len(dpo_right), dpo_ci95=list(bootstrap_interval(dpo_right, seed=seed)))
    return out


def markdown(report: dict) -> str:
    fmt = lambda v, ci: "-" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"    # noqa: E731
    lines = [f"# LoRA DPO, ORPO and SimPO on {START} with hh-rlhf ({report['setting']} setting), {report['date']}", "",
             f"Command: `{report['command']}` (commit {report['commit']}, {report['wall_minutes']:.0f} min).", "",
             f"Budget of every method: {report['budget']}. Held out: {report['pairs']} evaluation pairs of the "
             "real table's split (seed 42), scored once at the end; intervals: bootstrap 95%.", "",
             "| model | DPO reward acc. vs start [95%] | mean-log-prob acc. [95%] | val/rewards/accuracies | bar | holds |",
             "|---|---|---|---|---|---|"]
    for row, m in report["table"].items():
        bar = BARS.get(row)
        holds = "-" if bar is None else ("yes" if m[bar[0]] > bar[1] else "no")
        val = m.get("val_rewards_accuracies")
        lines.append(f"| {row} | {fmt(m['dpo_acc'], m['dpo_ci95'])} | {fmt(m['mean_logp_acc'], m['mean_logp_ci95'])} | "
                     f"{'-' if val is None else f'{val:.3f}'} | {'-' if bar is None else f'{bar[0]} > {bar[1]}'} | {holds} |")
    lines += ["", "DPO reward acc.: the pairs whose log p(chosen) - log p(rejected) rose above the start model's. "
              "Mean-log-prob acc.: the pairs whose chosen reply has the higher mean token log-prob (SimPO's and "
              "ORPO's reference-free reward). val/rewards/accuracies: train.py's own, on the policies' validation pairs.",
              "", "## Stage commands (run from the repository root)", ""]
    lines += [f"- {name} ({report['stage_seconds'][name]:.0f} s): `python train.py {shlex.join(args)}`"
              for name, args in report["commands"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/preference-family")
    p.add_argument("--small", action="store_true", help="a few rows and one step a method (what CI runs)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    args = p.parse_args(argv)
    from custom_dataset import CustomDataset
    from data_files import load_splits
    from models import load_trained
    began = time.perf_counter()
    setting = "small" if args.small else "real"
    s, b = SETTINGS[setting], BUDGET[setting]
    out = args.out if "://" in args.out else os.path.abspath(args.out)
    raw = list(next(iter(load_splits(DATA_PATH).values())))[:s["rows"]]
    folders = write_split(split_pairs(raw, s, 42), storage.join(out, "data"))   # the real table's split
    common = common_args(out, args.seed)
    commands = {name: method_command(name, folders["policy"], s, b, common) for name in args.methods}
    seconds = {name: run_stage(name, command, out) for name, command in commands.items()}
    pairs = list(CustomDataset(folders["eval"], "test", "dpo"))
    logps = {}
    for row, model_name in {"start": START, **{n: storage.join(out, n) for n in commands}}.items():
        model, tokenizer = load_trained(model_name)
        logps[row] = pair_logps(model, tokenizer, pairs, s["max_length"])
        print(f"[{row}] scored {len(pairs)} evaluation pairs", flush=True)
    table = {row: accuracies(v, None if row == "start" else logps["start"], args.seed) for row, v in logps.items()}
    for name in commands:
        table[name]["val_rewards_accuracies"] = last_scalar(storage.join(out, name), "val/rewards/accuracies")
    report = {"setting": setting, "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "seed": args.seed,
              "command": f"python experiments/preference_family.py {shlex.join(argv if argv is not None else sys.argv[1:])}",
              "budget": b, "pairs": len(pairs), "commands": commands, "stage_seconds": seconds, "table": table,
              "bars": BARS, "wall_minutes": (time.perf_counter() - began) / 60,
              "logps": {row: [list(x) for x in v] for row, v in logps.items()},
              "prompts": [p["prompt"] for p in pairs]}
    write_report(out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

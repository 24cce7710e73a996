"""One command: the seeds' pipeline and results table at CPU scale.

    python experiments/replicate.py                 # the laptop setting (2 CPU cores: see docs/results.md)
    python experiments/replicate.py --small         # the CI setting: every stage, a few minutes
    python experiments/replicate.py --real          # SmolLM2-135M-Instruct on hh-rlhf (experiments/real_prefs.py)
    python experiments/replicate.py --model-name Qwen/Qwen2.5-0.5B \\
        --sft-dataset HuggingFaceTB/smol-smoltalk --prefs-dataset HuggingFaceH4/ultrafeedback_binarized \\
        --problems-dataset data/problems --judge openai:nvidia/llama-3.1-nemotron-70b-reward \\
        --train-args "--use-ray --num-workers 8 --use-gpu --precision bf16-true" --out runs/replication-qwen

Stages (each one `python train.py ...` command, recorded in the report so any one can be run
again alone), all from the base model --model-name:
    sft      SFT on --sft-dataset                       sft_lp   the same with --length-penalty
    dpo      DPO from sft on --prefs-dataset            grpo     GRPO from sft, correctness reward,
    genrm    sft_verifier (GenRM-CoT) from dpo                   on --problems-dataset
    judge    a bt reward model on preference pairs no policy trained on (the test split of
             --prefs-dataset), the held-out judge of the win rates (--judge replaces it)
Then every model answers the held-out problems (test split of --problems-dataset) greedily,
and the table has, per row (base, sft, sft_lp, dpo, grpo, genrm, and genrm best-of-N: N samples
of the genrm policy, the one its adaptive verifier scores highest kept):
    accuracy     exact-match of the final answer against the reference
    win_*        win rate against the base model and against sft, judged by the held-out reward
                 model (rm) and by correctness (ties count half)
    bleu4, ppl   BLEU-4 of the replies against the references; perplexity of the references
    len          mean reply length in tokens
    verifier_acc, verifier_k   the genrm verifier's accuracy on the correct and incorrect
                 solutions of held-out problems, and its mean K with adaptive compute
Written to --out: results.md, results.json, figures/<stage>/*.png, and the stage run folders.
A stage whose run folder already holds a finished run is reused, so an interrupted
replication continues where it stopped. Everything is seeded: a fresh run gives the same table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.stages import finished, run_stage  # noqa: E402
from flags import EMBEDDED_DATA, EMBEDDED_MODEL  # noqa: E402

# Steps per stage and evaluation sizes. "default" is the laptop setting; "small" runs every
# stage in a few minutes for CI (its numbers only show that everything ran).
SETTINGS = {
    "default": dict(sft_steps=200, lp_every=10, dpo_steps=250, grpo_steps=100, genrm_steps=375, judge_steps=100,
                    curve_prompts=64, verifier_rows=16,
                    eval_problems=200, verify_problems=50, best_of=4, best_of_problems=50, k_min=4, k_max=16,
                    k_step=4, max_new_tokens=128),
    "small": dict(sft_steps=30, lp_every=10, dpo_steps=8, grpo_steps=2, genrm_steps=8, judge_steps=8,
                  curve_prompts=4, verifier_rows=2,
                  eval_problems=8, verify_problems=2, best_of=2, best_of_problems=2, k_min=2, k_max=4, k_step=2,
                  max_new_tokens=64),
}
ROWS = ("base", "sft", "sft_lp", "dpo", "grpo", "genrm", "genrm_best_of_n")
COLUMNS = ("accuracy", "win_vs_base_rm", "win_vs_sft_rm", "win_vs_base_correct", "win_vs_sft_correct", "bleu4",
           "ppl", "len", "verifier_acc", "verifier_k")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--small", action="store_true", help="the CI setting: every stage, tiny step counts")
    p.add_argument("--real", action="store_true",
                   help="the preference table on SmolLM2-135M-Instruct with the hh-rlhf slice in ../shared/data "
                        "(experiments/real_prefs.py); takes --small, --out, --seed and --train-args")
    p.add_argument("--out", default=None, help="output folder (default: runs/replication or runs/replication-small)")
    p.add_argument("--model-name", default=str(EMBEDDED_MODEL), help="the base model")
    p.add_argument("--sft-dataset", default=str(EMBEDDED_DATA["sft"]), help="SFT conversations")
    p.add_argument("--prefs-dataset", default=str(EMBEDDED_DATA["dpo"]), help="preference pairs (DPO; the judge's "
                                                                            "training data is their test split)")
    p.add_argument("--problems-dataset", default=str(EMBEDDED_DATA["grpo"]),
                   help="problems with known answers: GRPO, GenRM and the held-out evaluation (test split)")
    p.add_argument("--judge", default=None, help="win-rate judge instead of training one: a reward model or "
                                                 "openai:MODEL (see train.py --judge)")
    p.add_argument("--train-args", default="", help="extra train.py flags for every stage, e.g. \"--use-ray "
                                                    "--num-workers 2\"")
    p.add_argument("--seed", type=int, default=42, help="seed of every stage and of the evaluation")
    return p


def stage_commands(a, s: dict, out: str) -> dict[str, list[str]]:
    """train.py arguments of every stage, in the order they run."""
    # --validate-before-training: each curve starts at its stage's starting model (step 0).
    common = ["--storage-path", out, "--seed", str(a.seed), "--val-generations", "0", "--num-sanity-val-steps", "0",
              "--validate-before-training", *shlex.split(a.train_args)]
    run = lambda name: storage.join(out, name)  # noqa: E731
    # Curves for the figures (the seed's win rate and verifier score); greedy, so training is unchanged.
    win_rate_curve = ["--calculate-win-rate", "--judge", "correctness", "--win-rate-prompts", str(s["curve_prompts"])]
    sft = ["--training-type", "sft", "--model-name", a.model_name, "--dataset-name", a.sft_dataset,
           "--lr", "1e-3", "--max-steps", str(s["sft_steps"])]
    commands = {
        "sft": sft + ["--name", "sft"],
        "sft_lp": sft + ["--name", "sft_lp", "--length-penalty", "0.001", "--length-penalty-every", str(s["lp_every"]),
                         "--max-new-tokens", str(s["max_new_tokens"])],
        "dpo": ["--training-type", "dpo", "--model-name", run("sft"), "--dataset-name", a.prefs_dataset, "--name", "dpo",
                "--beta", "0.1", "--lr", "1e-4", "--max-steps", str(s["dpo_steps"]), *win_rate_curve],
        "grpo": ["--training-type", "grpo", "--model-name", run("sft"), "--dataset-name", a.problems_dataset,
                 "--name", "grpo", "--batch-size", "4", "--num-generations", "8", "--lr", "1e-4", "--warmup-ratio", "0",
                 "--max-steps", str(s["grpo_steps"]), "--max-new-tokens", str(s["max_new_tokens"]), *win_rate_curve],
        "genrm": ["--training-type", "sft_verifier", "--model-name", run("dpo"), "--dataset-name", a.problems_dataset,
                  "--name", "genrm", "--lambda", "0.1", "--lr", "1e-3", "--max-steps", str(s["genrm_steps"]),
                  "--verifier-eval-rows", str(s["verifier_rows"])],
    }
    if a.judge is None:
        commands["judge"] = ["--training-type", "bt", "--model-name", a.model_name, "--dataset-name",
                             storage.join(out, "judge-data"), "--name", "judge", "--lr", "2e-4", "--batch-size", "16",
                             "--max-steps", str(s["judge_steps"]),
                             # 180 training pairs are 12 steps an epoch: epochs must not stop it first.
                             "--max-epochs", "1000"]
    return {name: [*args, *common] for name, args in commands.items()}


def write_judge_data(prefs_dataset: str, folder: str) -> None:
    """The judge's training pairs: the test split of the preference data, which the policies
    never train on, saved as a train file (train.py holds out 10% of it for validation)."""
    from custom_dataset import CustomDataset
    rows = [{"prompt": r["prompt"], "chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}
            for r in CustomDataset(prefs_dataset, "test", "dpo")]
    storage.write_text_atomic(storage.join(folder, "train.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))


def evaluate(models: dict[str, str], judge_spec: str, a, s: dict) -> tuple[dict, dict]:
    """Every column of the table for every model; returns (metrics by row, replies by row)."""
    from custom_dataset import CustomDataset
    from text_metrics import bleu, reference_loss
    from generation import generate_completions
    from judges import judge_pairs, make_judge, summarize
    from models import load_trained
    problems = [r for r in CustomDataset(a.problems_dataset, "test", "grpo")][:s["eval_problems"]]
    prompts, references = [r["prompt"] for r in problems], [r["reference"] for r in problems]
    settings = dict(max_new_tokens=s["max_new_tokens"], seed=a.seed, batch_size=16)
    replies, results = {}, {}
    for row, name in models.items():
        model, tokenizer = load_trained(name)
        outs = [g[0] for g in generate_completions(model, tokenizer, prompts, progress=f"{row}: replies", **settings)]
        replies[row] = [o.text for o in outs]
        loss = reference_loss(model, tokenizer, prompts, references, 1024, 16)
        results[row] = {"bleu4": bleu(replies[row], references, 4), "ppl": math.exp(min(loss, 50.0)),
                        "len": sum(o.completion_tokens for o in outs) / len(outs)}
        del model
    judges = {"rm": make_judge(judge_spec), "correct": make_judge("correctness")}
    for row in models:
        correct = judges["correct"].score(prompts, replies[row], references)
        results[row]["accuracy"] = sum(correct) / len(correct)
        for against in ("base", "sft"):
            for jname, judge in judges.items():
                records = judge_pairs(judge, prompts, references, replies[row], replies[against])
                results[row][f"win_vs_{against}_{jname}"] = summarize(records).rate
    results["genrm"].update(verifier_accuracy(models["genrm"], a, s))
    results["genrm_best_of_n"] = best_of_n(models["genrm"], prompts[:s["best_of_problems"]],
                                           references[:s["best_of_problems"]], a, s)
    return results, replies


def _adaptive(model, tokenizer, question: str, solution: str, s: dict, seed: int):
    from extension.verifier import adaptive_verify, compute_verifier_scores
    draws = iter(range(seed, seed + 1000))      # a new seed a round: each round samples new rationales
    return adaptive_verify(lambda n: compute_verifier_scores(model, tokenizer, question, solution, k=n,
                                                             seed=next(draws), max_new_tokens=s["max_new_tokens"]),
                           k_min=s["k_min"], k_max=s["k_max"], step=s["k_step"])


def verifier_accuracy(name: str, a, s: dict) -> dict:
    """The verifier's accuracy (score > 0.5 means "correct") on the correct and the incorrect
    solution of the first held-out problems, and its mean K under adaptive compute."""
    from data_files import load_splits, pick_split
    from models import load_trained
    model, tokenizer = load_trained(name)
    rows = pick_split(load_splits(a.problems_dataset), "test", "sft_verifier", a.problems_dataset)
    if not {"question", "correct_solution", "incorrect_solution"} <= set(rows.column_names):
        print("[genrm] the problems data set has no correct_solution/incorrect_solution columns: "
              "verifier accuracy not measured", flush=True)
        return {}
    items = [(r["question"], r[key], key == "correct_solution") for r in rows.select(range(s["verify_problems"]))
             for key in ("correct_solution", "incorrect_solution")]
    results = [_adaptive(model, tokenizer, q, sol, s, a.seed + 1000 * i) for i, (q, sol, _) in enumerate(items)]
    right = sum((r.score > 0.5) == label for r, (_, _, label) in zip(results, items))
    return {"verifier_acc": right / len(items), "verifier_k": sum(r.k for r in results) / len(results)}


def best_of_n(name: str, prompts: list, references: list, a, s: dict) -> dict:
    """N sampled solutions a problem (temperature 1) from the genrm policy; the adaptive
    verifier keeps the one it scores highest. Also the single-sample accuracy of the same
    samples, the baseline best-of-N must beat."""
    from generation import generate_completions
    from judges import CorrectnessJudge
    from models import load_trained
    model, tokenizer = load_trained(name)
    groups = generate_completions(model, tokenizer, prompts, max_new_tokens=s["max_new_tokens"], temperature=1.0,
                                  num_return_sequences=s["best_of"], seed=a.seed, batch_size=16)
    judge, picked, single, ks = CorrectnessJudge(), [], [], []
    for i, (prompt, reference, group) in enumerate(zip(prompts, references, groups)):
        verdicts = [_adaptive(model, tokenizer, prompt[-1]["content"], c.text, s, a.seed + 1000 * (i * 100 + j))
                    for j, c in enumerate(group)]
        ks += [v.k for v in verdicts]
        best = max(range(len(group)), key=lambda j: verdicts[j].score)
        picked.append(judge.score([prompt], [group[best].text], [reference])[0])
        single += judge.score([prompt] * len(group), [c.text for c in group], [reference] * len(group))
    return {"accuracy": sum(picked) / len(picked), "single_sample_accuracy": sum(single) / len(single),
            "verifier_k": sum(ks) / len(ks)}


def markdown(results: dict, commands: dict, argv: list[str], s: dict, setting: str) -> str:
    def cell(row, col):
        value = results.get(row, {}).get(col)
        return "-" if value is None else f"{value:.3f}"
    head = f"| model | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}\n"
    body = "".join(f"| {row} | {' | '.join(cell(row, c) for c in COLUMNS)} |\n" for row in ROWS if row in results)
    bon = results["genrm_best_of_n"]
    lines = [f"# Replication ({setting} setting), {time.strftime('%Y-%m-%d')}", "",
             f"Command: `python experiments/replicate.py {shlex.join(argv)}`", "", head + body,
             f"GenRM best-of-{s['best_of']} on {s['best_of_problems']} problems: accuracy {bon['accuracy']:.3f} against "
             f"{bon['single_sample_accuracy']:.3f} for one sample of the same policy (mean K {bon['verifier_k']:.1f}).",
             "", "## Stage commands (run from the repository root)", ""]
    lines += [f"- {name}: `python train.py {shlex.join(args)}`" for name, args in commands.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.real:
        given = [k for k in ("model_name", "sft_dataset", "prefs_dataset", "problems_dataset", "judge")
                 if getattr(a, k) != parser.get_default(k)]
        if given:
            parser.error(f"--real runs its own models, data and judge (experiments/real_prefs.py); "
                         f"--{given[0].replace('_', '-')} cannot be used with it.")
        from experiments import real_prefs
        return real_prefs.run(a.small, a.out, a.seed, a.train_args, argv)
    setting = "small" if a.small else "default"
    s = SETTINGS[setting]
    out = a.out or f"runs/replication{'-small' if a.small else ''}"
    if "://" not in out:
        out = os.path.abspath(out)
    for key in ("model_name", "sft_dataset", "prefs_dataset", "problems_dataset"):
        value = getattr(a, key)
        if "://" not in value and os.path.exists(value):
            setattr(a, key, os.path.abspath(value))
    commands = stage_commands(a, s, out)
    seconds = {}
    if "judge" in commands and not finished(storage.join(out, "judge")):
        write_judge_data(a.prefs_dataset, storage.join(out, "judge-data"))
    for name, args in commands.items():
        seconds[name] = run_stage(name, args, out)
    from plots import make_plots
    for name in commands:
        make_plots(storage.join(out, name), storage.join(out, "figures", name))
    models = {"base": a.model_name, **{n: storage.join(out, n) for n in ("sft", "sft_lp", "dpo", "grpo", "genrm")}}
    results, replies = evaluate(models, a.judge or storage.join(out, "judge"), a, s)
    report = {"setting": setting, "settings": s, "seed": a.seed, "commands": commands, "stage_seconds": seconds,
              "results": results, "replies": replies}
    storage.write_text_atomic(storage.join(out, "results.json"), json.dumps(report, indent=1) + "\n")
    table = markdown(results, commands, argv, s, setting)
    storage.write_text_atomic(storage.join(out, "results.md"), table)
    print(table)
    print(f"Report: {storage.join(out, 'results.md')} and results.json; figures in {storage.join(out, 'figures')}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

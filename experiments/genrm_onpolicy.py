"""GenRM-CoT trained on the policy's own solutions (issue 21 (a)). genrm_real's lambda 0.1
verifier tells the bundled held-out solutions apart (CoT AUROC 0.83), but ranks the
candidates it samples itself little better than chance (0.61): each bundled incorrect
solution carries one random slip, while a sampled one carries the model's own slips, which
the model makes again when it re-computes the step. The GenRM paper trains its verifiers on
solutions sampled from the policy; this experiment does the same and measures best-of-N again.

    python experiments/genrm_onpolicy.py --policy-out runs/genrm-real --out runs/genrm-onpolicy   # ~90 min
    python experiments/genrm_onpolicy.py --policy-out runs/genrm-real --out runs/genrm-onpolicy \
        --candidates-from docs/results/genrm-real-240/results.json --bon-k 1   # the stored candidates, as measured
    python experiments/genrm_onpolicy.py --small --out /tmp/genrm-onpolicy    # every stage on a few rows (CI)

1. The policy: genrm_real's lambda 0.1 verifier ("check" critiques), trained under --policy-out
   with genrm_real's command, or reused there when finished.
2. Samples: SAMPLES_PER_PROBLEM completions of each training problem at temperature 1 from the
   policy (a seed of their own, apart from best-of-N's). Each is labelled by its final answer
   and gets the rule's critique (extension/critiques.py) where the rule's verdict agrees with
   that label; the rest (every step holds but the plan is wrong; no "a op b = c" step) are
   dropped and counted. Only training problems are sampled: the held-out ones stay unseen.
3. The on-policy verifier: sft_verifier from the start model at lambda 0.1, on the bundled rows
   (genrm_real's) plus these, with genrm_real's flags and seed.
4. Evaluation: its held-out verification row (genrm_real.evaluate_model), and best-of-N over
   the policy's held-out candidates (genrm_real.best_of_n: the same problems, N, seed and
   sampling, so the same candidates as the policy's own best-of-N), scored by the new verifier,
   with each score's candidate-level AUROC (is the candidate's final answer right?).
   --candidates-from takes the candidates (and the policy's own scores, shown beside the new
   ones) from a genrm_real results.json instead of sampling them again; --bon-k sets K.

Writes results.json (the data counts, every sample, score and pick) and results.md into --out.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.genrm_real import (SETTINGS, answer_of, best_of_n, cached, evaluate_model, solutions,  # noqa: E402
                                    verifier_command, verifier_rows, with_auroc_intervals, write_data)
from experiments.genrm_report import BON_METHODS, COMPUTE_LAMBDA, _ci, verification_table  # noqa: E402
from experiments.real_prefs import git_commit  # noqa: E402
from experiments.stages import experiment_parser, run_stage, write_report  # noqa: E402
from shared_flags import SEED  # noqa: E402

SAMPLES_PER_PROBLEM = 4
STYLE = "check"
SAMPLE_SEED_OFFSET = 5      # genrm_real draws with seed + 1 (pool), + 2 (candidates), + 3 (their rationales)


def on_policy_rows(problem: dict, samples: list[str], style: str = STYLE) -> tuple[list[dict], dict]:
    """sft_verifier rows for a problem's sampled solutions, and counts of what was kept: a
    sample whose rule verdict (every step holds) agrees with its final answer's correctness gets
    the rule's critique; the others are dropped by reason."""
    from extension.critiques import rule_based_critique, verification_prompt
    rows, counts = [], {"right": 0, "wrong": 0, "dropped_steps_hold_answer_wrong": 0,
                        "dropped_slip_answer_right": 0, "dropped_no_step": 0}
    for sample in samples:
        right = answer_of(sample) == str(problem["answer"])
        try:
            critique, verdict = rule_based_critique(sample, style)
        except ValueError:
            counts["dropped_no_step"] += 1
            continue
        if (verdict == "Yes") != right:
            counts["dropped_steps_hold_answer_wrong" if verdict == "Yes" else "dropped_slip_answer_right"] += 1
            continue
        counts["right" if right else "wrong"] += 1
        rows.append({"messages": [{"role": "user", "content": verification_prompt(problem["question"], sample)},
                                  {"role": "assistant", "content": critique}], "task": "verify"})
    return rows, counts


def sample_training_solutions(policy: str, problems: list[dict], s: dict, seed: int) -> list[list[str]]:
    from generation import generate_completions
    from models import load_trained
    model, tokenizer = load_trained(policy)
    groups = generate_completions(model, tokenizer, [[{"role": "user", "content": p["question"]}] for p in problems],
                                  max_new_tokens=s["solve_tokens"], batch_size=4, temperature=1.0,
                                  num_return_sequences=SAMPLES_PER_PROBLEM, seed=seed + SAMPLE_SEED_OFFSET,
                                  progress="policy samples (training problems)")
    return [[c.text for c in g] for g in groups]


def candidate_aurocs(bon: dict, problems: list[dict], modes: tuple[str, ...] = ("cot", "direct", "rule")) -> dict:
    """Each score's AUROC over every held-out candidate, against whether its final answer is right."""
    from extension.selection import auroc
    labels = [answer_of(c) == str(p["answer"]) for p, cs in zip(problems, bon["candidates"]) for c in cs]
    return {mode: auroc([x for row in bon["scores"][mode] for x in row], labels)
            for mode in modes} | {"candidates": len(labels), "right": sum(labels)}


def paired_gains(bon: dict, problems: list[dict], ns, seed: int) -> dict:
    """For each N, the verifier's CoT pick against the random pick, the first sample and majority
    vote on the same problems: the mean per-problem difference in accuracy with its bootstrap 95%
    interval (the problems resampled together, which the per-method intervals ignore)."""
    from extension.selection import selection_outcomes
    from win_stats import bootstrap_interval
    out = {}
    for n in ns:
        found = selection_outcomes([{"answers": [answer_of(c) for c in cs[:n]], "gold": str(p["answer"]),
                                     "scores": sc[:n]} for p, cs, sc in zip(problems, bon["candidates"], bon["scores"]["cot"])])
        out[n] = {}
        for base in ("random", "first", "majority"):
            d = [v - b for v, b in zip(found["verifier"], found[base])]
            out[n][base] = {"gain": sum(d) / len(d), "ci95": list(bootstrap_interval(d, seed=seed))}
    return out


def stored_candidates(path: str, problems: list[dict]) -> dict:
    """A genrm_real report's best-of-N candidates and its verifier's scores, checked to be of the
    same held-out problems in the same order."""
    stored = json.loads(storage.read_text(path))
    ids = stored["question_ids"]["test"][:len(problems)]
    if ids != [p["question_id"] for p in problems] or stored["best_of_n"]["problems"] != len(problems):
        raise ValueError(f"{path}: its best-of-N problems are not these {len(problems)} held-out problems")
    return stored["best_of_n"]


def markdown(r: dict) -> str:
    d, bon = r["data"], r["best_of_n"]
    lines = [f"# GenRM-CoT trained on the policy's own solutions ({r['date']}, commit {r['commit']}, "
             f"{r['wall_minutes']:.1f} min)", "", f"`{r['command']}`", "",
             f"Policy: {r['policy']}. {SAMPLES_PER_PROBLEM} samples of each of {r['settings']['train']} training "
             f"problems: {d['right']} right and {d['wrong']} wrong kept; dropped: "
             f"{d['dropped_steps_hold_answer_wrong']} with every step right but a wrong answer, "
             f"{d['dropped_slip_answer_right']} with a slip but the right answer, {d['dropped_no_step']} without a step. "
             f"The verifier trains on {d['bundled_rows']} bundled rows plus {d['on_policy_rows']} on-policy rows.", "",
             "## Verification of held-out (bundled) solutions", "", *verification_table(r["models"]), "",
             f"## Best-of-N ({bon['problems']} held-out problems, the policy's candidates at temperature 1)", "",
             "Candidate-level AUROC (score against a right final answer, "
             f"{r['candidate_auroc']['candidates']} candidates, {r['candidate_auroc']['right']} right): " +
             ", ".join(f"{m} {v:.3f}" for m, v in r["candidate_auroc"].items() if m not in ("candidates", "right")) + ".",
             "", "| N | " + " | ".join(f"{m.replace('_', ' ')} [95%]" for m in BON_METHODS) + " |",
             "|---" * (len(BON_METHODS) + 1) + "|"]
    for n, t in bon["table"].items():
        lines.append(f"| {n} | " + " | ".join(f"{t[m]['accuracy']:.3f} {_ci(t[m])}" for m in BON_METHODS) + " |")
    lines += ["", "The CoT pick's gain over each baseline, paired on the same problems [95%]: " + "; ".join(
        f"N = {n}: " + ", ".join(f"{b} {g['gain']:+.3f} {_ci(g)}" for b, g in gains.items())
        for n, gains in r["paired_gains"].items()) + "."]
    if "policy_as_verifier" in r:
        old = r["policy_as_verifier"]
        lines += ["", f"The policy's own scores of the same candidates ({r['candidates_from']}): candidate-level AUROC " +
                  ", ".join(f"{m} {v:.3f}" for m, v in old["candidate_auroc"].items() if m not in ("candidates", "right")) +
                  "; its picks: " + "; ".join(f"N = {n}: CoT {t['verifier_cot']['accuracy']:.3f} {_ci(t['verifier_cot'])}, "
                                             f"direct {t['verifier_direct']['accuracy']:.3f}"
                                             for n, t in old["table"].items()) + "."]
    lines += ["", "## Stage commands (run from the repository root)", ""] + [
        f"- {name} ({r['stage_seconds'][name]:.0f} s): `python train.py {shlex.join(args)}`"
        for name, args in r["commands"].items()]
    return "\n".join(lines) + "\n"


def run(small: bool, out: str, policy_out: str, seed: int, argv: list[str], candidates_from: str | None = None,
        bon_k: int | None = None, bon_problems: int | None = None) -> int:
    began = time.perf_counter()
    s = {**SETTINGS["small" if small else "real"], **({"bon_k": bon_k} if bon_k else {}),
         **({"bon_problems": bon_problems} if bon_problems else {})}
    out, policy_out = (p if "://" in p else os.path.abspath(p) for p in (out, policy_out))
    parts = write_data(s, policy_out)        # genrm_real's data, where its policy stage expects it
    policy_name = f"verifier_lambda{COMPUTE_LAMBDA}"
    commands = {policy_name: verifier_command(s, storage.join(policy_out, "data", STYLE), policy_out, policy_name,
                                              COMPUTE_LAMBDA, seed)}
    seconds = {policy_name: run_stage(policy_name, commands[policy_name], policy_out)}
    policy = storage.join(policy_out, policy_name)
    samples = cached(storage.join(out, "eval", "train_samples.json"),
                     lambda: sample_training_solutions(policy, parts["train"], s, seed))
    counts, extra = {}, []
    for problem, group in zip(parts["train"], samples):
        rows, found = on_policy_rows(problem, group)
        extra += rows
        counts = {k: counts.get(k, 0) + v for k, v in found.items()}
    bundled = [r for p in parts["train"] for r in verifier_rows(p, STYLE)]
    data = storage.join(out, "data", "on_policy")
    storage.write_text_atomic(storage.join(data, "train.jsonl"), "".join(json.dumps(r) + "\n" for r in bundled + extra))
    storage.write_text_atomic(storage.join(data, "test.jsonl"), storage.read_text(
        storage.join(policy_out, "data", STYLE, "test.jsonl")))               # genrm_real's validation rows
    name = "verifier_on_policy"
    commands[name] = verifier_command(s, data, out, name, COMPUTE_LAMBDA, seed)
    seconds[name] = run_stage(name, commands[name], out)
    verifier = storage.join(out, name)
    evaluation = {"on-policy verifier": cached(storage.join(out, "eval", "on_policy.json"),
                                               lambda: evaluate_model(verifier, parts, s, seed))}
    with_auroc_intervals(evaluation, solutions(parts["test"])[1], solutions(parts["test"][:s["cot_problems"]])[1], seed)
    held_out = parts["test"][:s["bon_problems"]]
    extra_report = {}
    if candidates_from:
        stored = stored_candidates(candidates_from, held_out)
        storage.write_text_atomic(storage.join(out, "eval", "candidates.json"), json.dumps(stored["candidates"]) + "\n")
        extra_report = {"candidates_from": candidates_from, "policy_as_verifier": {
            "table": stored["table"], "candidate_auroc": candidate_aurocs(stored, held_out, ("cot", "direct"))}}
    bon = best_of_n(verifier, parts, s, seed, out, policy_path=policy)
    report = {"setting": "small" if small else "real", "settings": s, "seed": seed, "date": time.strftime("%Y-%m-%d"),
              "commit": git_commit(), "command": f"python experiments/genrm_onpolicy.py {shlex.join(argv)}",
              "policy": policy, "data": {**counts, "bundled_rows": len(bundled), "on_policy_rows": len(extra)},
              "train_samples": samples, "commands": commands, "stage_seconds": seconds, "models": evaluation,
              "candidate_auroc": candidate_aurocs(bon, held_out), "best_of_n": bon,
              "paired_gains": paired_gains(bon, held_out, s["ns"], seed), **extra_report,
              "wall_minutes": (time.perf_counter() - began) / 60}
    write_report(out, report, markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "every stage on a few rows and steps (about 6 min; CI tests its parts)")
    p.add_argument("--out", default="runs/genrm-onpolicy", help="output folder")
    p.add_argument("--policy-out", default=None,
                   help="genrm_real's output folder, whose lambda 0.1 verifier is the policy (trained there if "
                        "missing); None: --out itself")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--candidates-from", default=None,
                   help="a genrm_real results.json whose best-of-N candidates (the same held-out problems) are "
                        "scored instead of sampling them again; its verifier's scores are shown beside")
    p.add_argument("--bon-k", type=int, default=None, help="rationales a candidate in CoT mode; None: the setting's")
    p.add_argument("--bon-problems", type=int, default=None,
                   help="held-out problems for best-of-N, the first of genrm_real's held-out part (at most its "
                        "size); None: the setting's")
    args = p.parse_args(argv)
    held_out = SETTINGS["small" if args.small else "real"]["test"]
    if args.bon_problems is not None and not 1 <= args.bon_problems <= held_out:
        p.error(f"--bon-problems must be between 1 and the held-out part's {held_out} problems (got {args.bon_problems})")
    return run(args.small, args.out, args.policy_out or args.out, args.seed,
               list(sys.argv[1:] if argv is None else argv), args.candidates_from, args.bon_k, args.bon_problems)


if __name__ == "__main__":
    sys.exit(main())

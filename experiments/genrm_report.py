"""The report of experiments/genrm_real.py and genrm_gsm8k.py: the markdown tables (verification
with intervals, adaptive against fixed K, best-of-N, each stage's command) and the figures (AUROC
against mean K; best-of-N accuracy against N), from a report dict as run() assembles it.
"""
from __future__ import annotations

import shlex

import storage
from experiments.real_prefs import START
from extension.critiques import STYLES

COMPUTE_LAMBDA = 0.1        # the seed's; the verifier of the compute and best-of-N studies
AUROC_SHARE = 0.98          # the bar: adaptive at 98% of fixed K_max's AUROC
BON_METHODS = ("verifier_cot", "verifier_direct", "rule_checker", "majority", "random", "first")


def figures(report: dict, out: str) -> None:
    """AUROC against mean K (fixed and adaptive); best-of-N accuracy against N."""
    from plots import figure_png
    rows = report["compute"]["test"]
    fixed = [(r["mean_k"], r["auroc"]) for r in rows if r["method"].startswith("fixed")]
    adaptive = sorted((r["mean_k"], r["auroc"]) for r in rows if "tau" in r)
    storage.write_bytes_atomic(storage.join(out, "figures", "auroc_vs_k.png"), figure_png(
        "Verifier AUROC against rationales a solution", "AUROC (held-out solutions)",
        {"fixed K": fixed, "adaptive (tau sweep)": adaptive}, xlabel="mean rationales per solution (K)"))
    if "best_of_n" not in report:
        return
    bon = report["best_of_n"]["table"]
    curves = {m: [(int(n), bon[n][m]["accuracy"]) for n in bon] for m in BON_METHODS}
    storage.write_bytes_atomic(storage.join(out, "figures", "best_of_n.png"), figure_png(
        "Best-of-N final-answer accuracy", "accuracy (held-out problems)", curves, xlabel="N candidates"))


def _ci(v: dict, key: str = "ci95") -> str:
    return f"[{v[key][0]:.3f}, {v[key][1]:.3f}]"


def markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"# GenRM-CoT on {START}: the bundled arithmetic task ({r['date']}, commit {r['commit']}, "
             f"{r['wall_minutes']:.1f} min)", "", f"`{r['command']}`", "",
             f"Data: {s['train']} training problems, {s['val']} validation problems, {s['test']} held-out problems "
             "(bundled test split; question ids and texts disjoint from the others: checked).", "",
             "## Verification of held-out solutions, and the solve rate", "",
             f"Direct: p(Yes) with no rationale, {2 * s['test']} solutions. CoT: mean p(Yes) over K = {s['k_eval']} "
             f"sampled rationales (eqs. 9-10), {2 * s['cot_problems']} solutions. Accuracy: score > 0.5 is Yes. "
             f"Solve rate: greedy, the final answer equal to the gold one, on {s['solve_problems']} problems.", "",
             *verification_table(r["models"])]
    lines += ["", f"Critique style of the lambda rows: {r.get('style', STYLES[0])}."]
    if "compute" not in r:
        return "\n".join(lines + _commands(r)) + "\n"
    comp = r["compute"]
    lines += ["", f"## Adaptive compute against fixed K (verifier lambda = {COMPUTE_LAMBDA})", "",
              f"{2 * s['pool_test']} held-out solutions, a pool of {max(s['ks'])} rationales each; adaptive: "
              f"rounds of {s['step']} from {s['k_min']}, stopping once Var(p_yes) < tau. Wall time: the rationales "
              "times their measured cost.", "",
              "| method | mean K | share of K_max | AUROC [95%] | share of K_max's AUROC [95%, paired] | accuracy | "
              "wall time (s) |", "|---|---|---|---|---|---|---|"]
    for row in comp["test"]:
        lines.append(f"| {row['method']} | {row['mean_k']:.1f} | {row['share_of_kmax']:.2f} | {row['auroc']:.3f} "
                     f"{_ci(row, 'auroc_ci95')} | {row['auroc_share']:.3f} {_ci(row, 'auroc_share_ci95')} | "
                     f"{row['accuracy']:.3f} | {row['seconds']:.0f} |")
    below = comp["first_round_variance"]["share_below"]
    lines += ["", f"Var(p_yes) after the first round of {s['k_min']}: share of solutions below " +
              ", ".join(f"{c}: {v:.2f}" for c, v in below.items()) +
              f". tau chosen on the validation solutions (fewest rationales at {AUROC_SHARE:.0%} of fixed "
              f"K_max's AUROC there): {comp['tau_chosen_on_val']}.", ""]
    if "best_of_n" not in r:
        return "\n".join(lines + _commands(r)) + "\n"
    bon = r["best_of_n"]
    lines += [f"## Best-of-N ({bon['problems']} held-out problems; candidates sampled at temperature 1 from the "
              f"lambda = {COMPUTE_LAMBDA} model, picked by its own score: CoT with K = {s['bon_k']}, or direct; "
              "the rule checker picks the first candidate whose every step holds)", "",
              "| N | " + " | ".join(f"{m.replace('_', ' ')} [95%]" for m in BON_METHODS) + " |",
              "|---" * (len(BON_METHODS) + 1) + "|"]
    for n, t in bon["table"].items():
        lines.append(f"| {n} | " + " | ".join(f"{t[m]['accuracy']:.3f} {_ci(t[m])}"
                                             for m in BON_METHODS) + " |")
    return "\n".join(lines + _commands(r)) + "\n"


def verification_table(models: dict) -> list[str]:
    """The markdown rows of each model's verification and solve rate, each with its 95% interval."""
    lines = ["| model | direct AUROC [95%] | direct acc [95%] | CoT AUROC [95%] | CoT acc [95%] | solve rate [95%] |",
             "|---|---|---|---|---|---|"]
    for name, e in models.items():
        d, c, g = e["direct"], e["cot"], e["solve"]
        lines.append(f"| {name} | {d['auroc']:.3f} {_ci(d, 'auroc_ci95')} | {d['accuracy']:.3f} {_ci(d, 'accuracy_ci95')} | "
                     f"{c['auroc']:.3f} {_ci(c, 'auroc_ci95')} | {c['accuracy']:.3f} {_ci(c, 'accuracy_ci95')} | "
                     f"{g['accuracy']:.3f} {_ci(g)} |")
    return lines


def _commands(r: dict) -> list[str]:
    return ["", "## Stage commands (run from the repository root)", ""] + [
        f"- {name} ({r['stage_seconds'][name]:.0f} s): `python train.py {shlex.join(args)}`"
        for name, args in r["commands"].items()]

"""GenRM-CoT on a real model: sft_verifier on SmolLM2-135M-Instruct with the bundled arithmetic
problems, verification before and after training, best-of-N against majority vote, and
adaptive compute against fixed K.

    python experiments/genrm_real.py                 # about 90 minutes on 2 CPU cores
    python experiments/genrm_real.py --small         # every stage on a few rows (what CI runs)
    python experiments/genrm_real.py --train-problems 240 --lambdas 0.1 --styles inverse check \
        --verification-only --out runs/genrm-inverse  # screen a recipe: verifiers and their table only

1. Data (<out>/data): the first TRAIN problems of the bundled `problems/` train split train;
   the next VAL ones are train.py's validation split and the validation part that tau is
   chosen on; the bundled test split is held out from both (its question ids and texts are
   checked to be disjoint from the rest). A problem gives three rows: the rule-based
   critique of its correct and of its incorrect solution (extension/critiques.py) and the
   generation of its correct solution; <out>/data/<style> holds them in each critique style.
2. Verifiers: `sft_verifier` from SmolLM2-135M-Instruct, once for each lambda in LAMBDAS
   (eq. 7: L_verify + lambda * L_correct) with the "check" critiques, and once at lambda 0.1
   with the "inverse" ones (each sum undone from the written result): the same problems, steps
   and seed.
   --styles and --lambdas choose other stages: the first style at every lambda, the others at 0.1.
3. Every model (the start model and each verifier) on the held-out problems: direct-mode
   p(Yes) of both solutions of each problem; CoT-mode scores (eqs. 9-10) with K rationales
   on the first problems; and its own greedy solve rate on the first problems.
4. Compute (the lambda = 0.1 verifier, the seed's): a pool of K_max rationales a solution,
   on held-out and validation solutions. Fixed K = n reads the first n; adaptive compute
   takes rounds of 8 from the pool in order (both are independent draws, so this is the
   same as sampling each scheme anew, at one scheme's cost). tau is also chosen on the
   validation solutions: the one with the fewest rationales at 98% of fixed K_max's AUROC.
5. Best-of-N: N solutions a held-out problem sampled at temperature 1 from the lambda = 0.1
   model itself (the unified GenRM model generates and verifies; the start model answers
   few of these problems and not in their format), picked by its CoT score (K = bon_k
   rationales, kept for experiments/critique_steps.py) or its direct score, against the first
   sample, a random pick, a majority vote over final answers and a perfect step checker (the
   rule the critiques were written by: what the verifier would pick if it had learnt its
   training target exactly), for N = 4 and 8, each with a bootstrap 95% interval.

Each model's evaluation is cached in <out>/eval/ and each train.py stage is reused when
finished, so a re-run continues where it stopped. Output in --out: results.md (the tables),
results.json (every score, rationale and reply) and figures/ (AUROC against mean K;
best-of-N accuracy against N).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.real_prefs import START, common_args, git_commit  # noqa: E402
from experiments.genrm_report import AUROC_SHARE, COMPUTE_LAMBDA, figures, markdown  # noqa: E402
from experiments.stages import experiment_parser, run_stage, write_report  # noqa: E402
from extension.critiques import STYLES  # noqa: E402
from shared_flags import SEED  # noqa: E402

PROBLEMS = os.path.join(REPO, "embedded", "data", "problems")
LAMBDAS = (0.0, 0.1, 1.0)
# The seed's tau is 0.05. A trained verifier's p(Yes) sits near 0 or 1, so a round of 8's variance is
# about d(8-d)/64 with d dissenting rationales: 0.109 for one, 0.19 for two, 0.23 for three. Every tau
# below 0.1 stops only on a unanimous round; 0.1 and 0.2 (added 2026-12-07) let one or two dissents stop.
TAUS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
DEFAULT_STYLES = ("check", "inverse")   # the first at every lambda, the second at COMPUTE_LAMBDA
SETTINGS = {
    # Measured on 2 CPU cores (2026-12-04): a training step of 8 rows (~180 tokens each, padded to
    # the longest) takes ~7 s (10.5 min a verifier of 240 problems: 80 verified only 0.56 to 0.59),
    # a trained model's evaluation ~4 min, 32 rationales of a solution ~21 s (31 s before p(Yes) shared the
    # prompt's KV cache, 2026-12-07), 8 policy samples
    # and their CoT scores (K = 1) ~1 s a problem. The pool is 50 held-out and 20 validation solutions
    # (12 and 6 until 2026-12-07: too few to judge adaptive compute's 98% bar), best-of-N's K is 4
    # (1 until then: a candidate-level AUROC of 0.61).
    "real": dict(train=240, val=10, test=100, solve_problems=50, cot_problems=20, pool_test=25, pool_val=10,
                 bon_problems=60, ns=(4, 8), bon_k=4, k_eval=4, ks=(8, 16, 32), k_min=8, step=8, epochs=1, batch_size=8,
                 lr=1e-4, max_length=256, max_new_tokens=80, solve_tokens=96, max_steps=None),
    "small": dict(train=6, val=2, test=3, solve_problems=2, cot_problems=2, pool_test=2, pool_val=2,
                  bon_problems=2, ns=(2, 4), bon_k=1, k_eval=2, ks=(2, 4), k_min=2, step=2, epochs=1, batch_size=2,
                  lr=1e-4, max_length=128, max_new_tokens=8, solve_tokens=8, max_steps=1),
}
_NUMBER = re.compile(r"-?\d+")


def answer_of(text: str) -> str | None:
    """A solution's final answer: its "The answer is N" (judges.final_answer), else its last
    integer (the start model writes free text), else None."""
    from judges import final_answer
    found = final_answer(text)
    if found is not None:
        return found
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def read_problems(name: str) -> list[dict]:
    with open(os.path.join(PROBLEMS, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_data(s: dict, out: str) -> dict:
    """The three parts (module docstring, 1.); raises if the held-out part shares a question
    id or text with the others."""
    train_rows = read_problems("train.jsonl")
    parts = {"train": train_rows[:s["train"]], "val": train_rows[s["train"]:s["train"] + s["val"]],
             "test": read_problems("test.jsonl")[:s["test"]]}
    seen = {key for part in ("train", "val") for r in parts[part] for key in (r["question_id"], r["question"])}
    shared = [r["question_id"] for r in parts["test"] if r["question_id"] in seen or r["question"] in seen]
    if shared:
        raise ValueError(f"held-out problems {shared[:5]} are also in the training or validation part")
    for style in STYLES:
        for part, name in (("train", "train.jsonl"), ("val", "test.jsonl")):    # train.py's splits
            rows = [r for p in parts[part] for r in verifier_rows(p, style)]
            storage.write_text_atomic(storage.join(out, "data", style, name), "".join(json.dumps(r) + "\n" for r in rows))
    return parts


def verifier_rows(problem: dict, style: str) -> list[dict]:
    """A problem's three sft_verifier rows: the critique (in `style`) of its correct and of its
    incorrect solution, and the generation of the correct one."""
    from extension.critiques import rule_based_critique, verification_prompt
    rows = [{"messages": [{"role": "user", "content": verification_prompt(problem["question"], problem[key])},
                          {"role": "assistant", "content": rule_based_critique(problem[key], style)[0]}],
             "task": "verify"} for key in ("correct_solution", "incorrect_solution")]
    return rows + [{"messages": [{"role": "user", "content": problem["question"]},
                                 {"role": "assistant", "content": problem["correct_solution"]}], "task": "generate"}]


def verifier_command(s: dict, data: str, out: str, name: str, lam: float, seed: int) -> list[str]:
    """sft_verifier from START on the rows in `data` (train.jsonl, test.jsonl), run `name` under `out`."""
    return ["--training-type", "sft_verifier", "--model-name", START, "--dataset-name", data,
            "--lambda", str(lam), "--lr", str(s["lr"]), "--batch-size", str(s["batch_size"]),
            "--max-epochs", str(s["epochs"]), "--max-length", str(s["max_length"]), "--verifier-eval-rows", "0",
            *(["--max-steps", str(s["max_steps"])] if s["max_steps"] else []),
            "--name", name, *common_args(out, seed)]


def solutions(problems: list[dict]) -> tuple[list[tuple[str, str]], list[bool]]:
    """Each problem's correct (label True) and incorrect solution, in that order."""
    items = [(p["question"], p[key]) for p in problems for key in ("correct_solution", "incorrect_solution")]
    return items, [i % 2 == 0 for i in range(len(items))]


def cached(path: str, compute):
    """The JSON at `path`, or compute() written there (atomically) first."""
    if storage.exists(path):
        return json.loads(storage.read_text(path))
    value = compute()
    storage.write_text_atomic(path, json.dumps(value, indent=1) + "\n")
    return value


def verification_metrics(scores: list[float], labels: list[bool], seed: int) -> dict:
    from extension.selection import auroc
    from win_stats import bootstrap_interval
    right = [float((x > 0.5) == y) for x, y in zip(scores, labels)]
    return {"auroc": auroc(scores, labels), "accuracy": sum(right) / len(right),
            "accuracy_ci95": list(bootstrap_interval(right, seed=seed)), "solutions": len(scores)}


def evaluate_model(model_path: str, parts: dict, s: dict, seed: int) -> dict:
    """Direct and CoT verification of the held-out solutions, and the greedy solve rate."""
    items, labels = solutions(parts["test"])
    cot_items, cot_labels = solutions(parts["test"][:s["cot_problems"]])
    return verify_and_solve(model_path, (items, labels), (cot_items, cot_labels), parts["test"][:s["solve_problems"]],
                            s, seed)


def verify_and_solve(model_path: str, direct: tuple[list, list], cot: tuple[list, list], solve: list[dict],
                     s: dict, seed: int) -> dict:
    """One model's table row: direct p(Yes) of the (question, solution) items in `direct`, CoT
    scores (K = s["k_eval"] rationales of up to s["max_new_tokens"]) of those in `cot`, each with
    its labels, and the greedy solve rate on `solve` ({"question", "answer"} dicts)."""
    from extension.verifier import cot_pool, direct_scores
    from generation import generate_replies
    from models import load_trained
    from win_stats import bootstrap_interval
    model, tokenizer = load_trained(model_path)
    began = time.perf_counter()
    direct_found = direct_scores(model, tokenizer, direct[0])
    direct_seconds = time.perf_counter() - began
    began = time.perf_counter()
    pool, rationales = cot_pool(model, tokenizer, cot[0], s["k_eval"], max_new_tokens=s["max_new_tokens"],
                                seed=seed, progress="CoT verification")
    cot_seconds = time.perf_counter() - began
    cot_found = [sum(p) / len(p) for p in pool]
    replies = generate_replies(model, tokenizer, [[{"role": "user", "content": p["question"]}] for p in solve],
                               max_new_tokens=s["solve_tokens"], batch_size=16, progress="solving")
    solved = [float(answer_of(r) == str(p["answer"])) for r, p in zip(replies, solve)]
    return {"direct": {**verification_metrics(direct_found, direct[1], seed), "seconds": direct_seconds,
                       "scores": direct_found},
            "cot": {**verification_metrics(cot_found, cot[1], seed), "k": s["k_eval"], "seconds": cot_seconds,
                    "scores": pool, "rationales": rationales},
            "solve": {"accuracy": sum(solved) / len(solved), "ci95": list(bootstrap_interval(solved, seed=seed)),
                      "replies": replies}}


def with_auroc_intervals(evaluation: dict, direct_labels: list[bool], cot_labels: list[bool], seed: int) -> dict:
    """Each model's direct and CoT AUROC gets its bootstrap 95% interval (selection.auroc_interval),
    from the stored scores, so that cached evaluations get one too."""
    from extension.selection import auroc_interval
    for e in evaluation.values():
        e["direct"]["auroc_ci95"] = list(auroc_interval(e["direct"]["scores"], direct_labels, seed=seed))
        cot = [sum(p) / len(p) for p in e["cot"]["scores"]]
        e["cot"]["auroc_ci95"] = list(auroc_interval(cot, cot_labels, seed=seed))
    return evaluation


def compute_study(model_path: str, parts: dict, s: dict, seed: int) -> dict:
    """The pool of K_max rationales on held-out and validation solutions (module docstring, 4.)."""
    from extension.verifier import cot_pool
    from models import load_trained
    model, tokenizer = load_trained(model_path)
    out = {}
    for part in ("test", "val"):
        items, labels = solutions(parts[part][:s[f"pool_{part}"]])
        began = time.perf_counter()
        pool, rationales = cot_pool(model, tokenizer, items, max(s["ks"]), max_new_tokens=s["max_new_tokens"],
                                    seed=seed + 1, progress=f"rationale pool ({part})")
        out[part] = {"labels": labels, "scores": pool, "rationales": rationales,
                     "seconds_per_rationale": (time.perf_counter() - began) / (len(items) * max(s["ks"]))}
    return out


def compute_tables(pool: dict, s: dict, seed: int = SEED) -> dict:
    """Fixed K and adaptive rows on the held-out pool, tau chosen on the validation pool, and
    the spread of Var(p_yes) after the first round."""
    from extension.selection import auroc_interval, auroc_ratio_interval
    from extension.verifier import pool_study
    study = {part: pool_study(pool[part]["scores"], pool[part]["labels"], s["ks"], TAUS, k_min=s["k_min"],
                              step=s["step"]) for part in ("test", "val")}
    full = {part: next(r for r in study[part] if r["method"] == f"fixed K={max(s['ks'])}") for part in study}
    good = [r for r in study["val"] if "tau" in r and r["auroc"] >= AUROC_SHARE * full["val"]["auroc"]]
    chosen = min(good, key=lambda r: (r["mean_k"], -r["tau"]))["tau"] if good else None
    per = pool["test"]["seconds_per_rationale"]
    labels = pool["test"]["labels"]
    for row in study["test"]:
        row["share_of_kmax"] = row["mean_k"] / max(s["ks"])
        row["auroc_share"] = row["auroc"] / full["test"]["auroc"] if full["test"]["auroc"] else float("nan")
        row["auroc_ci95"] = list(auroc_interval(row["scores"], labels, seed=seed))
        row["auroc_share_ci95"] = list(auroc_ratio_interval(row["scores"], full["test"]["scores"], labels, seed=seed))
        row["seconds"] = row["mean_k"] * per * len(labels)      # rationales x their measured cost
    first = [sum((x - sum(p[:s["k_min"]]) / s["k_min"]) ** 2 for x in p[:s["k_min"]]) / s["k_min"]
             for p in pool["test"]["scores"]]
    cuts = (0.001, 0.01, 0.05, 0.1, 0.2)
    return {"test": study["test"], "val": study["val"], "tau_chosen_on_val": chosen,
            "first_round_variance": {"values": first, "share_below": {c: sum(v < c for v in first) / len(first)
                                                                      for c in cuts}}}


def rule_score(solution: str) -> float:
    """1 when every "a op b = c" step of a solution holds, else 0 (also with no step): the pick of
    a perfect step checker, the rule the verifier's critiques were written by."""
    from extension.critiques import rule_based_critique
    try:
        return float(rule_based_critique(solution)[1] == "Yes")
    except ValueError:
        return 0.0


def best_of_n(verifier_path: str, parts: dict, s: dict, seed: int, out: str,
              modes: tuple[str, ...] = ("cot", "direct"), rule: bool = True, policy_path: str | None = None) -> dict:
    """Candidates sampled from the verifier itself (the unified GenRM model: its generation
    term trained it to solve), or from `policy_path` when given, scored by the verifier in each
    of `modes`: CoT (K = bon_k, the rationales kept) and direct (module docstring, 5.); with
    `rule`, also picked by rule_score."""
    from extension.selection import selection_outcomes
    from win_stats import bootstrap_interval
    problems = parts["test"][:s["bon_problems"]]
    n = max(s["ns"])

    def sample():
        from generation import generate_completions
        from models import load_trained
        model, tokenizer = load_trained(policy_path or verifier_path)
        groups = generate_completions(model, tokenizer, [[{"role": "user", "content": p["question"]}] for p in problems],
                                      max_new_tokens=s["solve_tokens"], batch_size=4, temperature=1.0,
                                      num_return_sequences=n, seed=seed + 2, progress="policy samples")
        return [[c.text for c in g] for g in groups]

    candidates = cached(storage.join(out, "eval", "candidates.json"), sample)

    def score():
        from extension.verifier import cot_pool, direct_scores
        from models import load_trained
        model, tokenizer = load_trained(verifier_path)
        flat = [(p["question"], c) for p, cs in zip(problems, candidates) for c in cs]
        found = {}
        if "direct" in modes:
            found["direct"] = direct_scores(model, tokenizer, flat)
        if "cot" in modes:
            found["cot_samples"], found["cot_rationales"] = cot_pool(
                model, tokenizer, flat, s["bon_k"], seed=seed + 3, max_new_tokens=s["max_new_tokens"],
                progress="verifying candidates")
            found["cot"] = [sum(x) / len(x) for x in found["cot_samples"]]
        return {mode: [v[i * n:(i + 1) * n] for i in range(len(problems))] for mode, v in found.items()}

    scores = cached(storage.join(out, "eval", "candidate_scores.json"), score)
    if rule:
        scores["rule"] = [[rule_score(c) for c in cs] for cs in candidates]
    table = {}
    for k in s["ns"]:
        outcomes = {}
        for mode in (*modes, *(("rule",) if rule else ())):
            rows = [{"answers": [answer_of(c) for c in cs[:k]], "gold": str(p["answer"]), "scores": sc[:k]}
                    for p, cs, sc in zip(problems, candidates, scores[mode])]
            found = selection_outcomes(rows)
            pick = "rule_checker" if mode == "rule" else f"verifier_{mode}"
            outcomes.update({m: v for m, v in found.items() if m != "verifier"}, **{pick: found["verifier"]})
        table[k] = {m: {"accuracy": sum(v) / len(v), "ci95": list(bootstrap_interval(v, seed=seed))}
                    for m, v in outcomes.items()}
    return {"problems": len(problems), "table": table, "candidates": candidates, "scores": scores}


def run(small: bool, out: str | None, seed: int, argv: list[str], *, overrides: dict | None = None,
        lambdas: tuple[float, ...] = LAMBDAS, styles: tuple[str, ...] = DEFAULT_STYLES, verification_only: bool = False,
        with_best_of_n: bool = True) -> int:
    """The whole experiment (module docstring); returns the exit status. `overrides` replace
    settings (train problems, epochs); `styles[0]` is trained at every lambda in `lambdas`, each
    other style at COMPUTE_LAMBDA; `verification_only` stops after the verification table, and
    without `with_best_of_n` the run ends after the compute study."""
    began = time.perf_counter()
    s = {**SETTINGS["small" if small else "real"], **(overrides or {})}
    out = out or f"runs/genrm-real{'-small' if small else ''}"
    out = out if "://" in out else os.path.abspath(out)
    parts = write_data(s, out)
    primary = styles[0]
    stages = {**{f"lambda {lam}": (f"verifier_lambda{lam}", lam, primary) for lam in lambdas},
              **{f"lambda {COMPUTE_LAMBDA}, {style}": (f"verifier_{style}", COMPUTE_LAMBDA, style) for style in styles[1:]}}
    commands = {run: verifier_command(s, storage.join(out, "data", style), out, run, lam, seed)
                for run, lam, style in stages.values()}
    seconds = {name: run_stage(name, args, out) for name, args in commands.items()}
    models = {"start": START, **{label: storage.join(out, run) for label, (run, _, _) in stages.items()}}
    evaluation = {name: cached(storage.join(out, "eval", re.sub(r"[^\w.]+", "_", name) + ".json"),
                               lambda path=path: evaluate_model(path, parts, s, seed))
                  for name, path in models.items()}
    with_auroc_intervals(evaluation, solutions(parts["test"])[1], solutions(parts["test"][:s["cot_problems"]])[1], seed)
    report = {"setting": "small" if small else "real", "settings": s, "style": primary, "seed": seed,
              "date": time.strftime("%Y-%m-%d"), "commit": git_commit(),
              "command": f"python experiments/genrm_real.py {shlex.join(argv)}",
              "question_ids": {part: [p["question_id"] for p in rows] for part, rows in parts.items()},
              "commands": commands, "stage_seconds": seconds, "models": evaluation}
    verifier = models.get(f"lambda {COMPUTE_LAMBDA}")
    if not verification_only:
        if verifier is None:
            raise ValueError(f"--lambdas: the compute and best-of-N studies use the lambda {COMPUTE_LAMBDA} verifier; "
                             f"add {COMPUTE_LAMBDA} or pass --verification-only")
        pool = cached(storage.join(out, "eval", "pool.json"), lambda: compute_study(verifier, parts, s, seed))
        report.update(compute=compute_tables(pool, s, seed), pool=pool)
        if with_best_of_n:
            report["best_of_n"] = best_of_n(verifier, parts, s, seed, out)
    report["wall_minutes"] = (time.perf_counter() - began) / 60
    if not verification_only:
        figures(report, out)
    write_report(out, report, markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__)
    p.add_argument("--out", default=None, help="output folder; None: runs/genrm-real[-small]")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--train-problems", type=int, default=None, help="training problems; None: the setting's")
    p.add_argument("--epochs", type=int, default=None, help="epochs a verifier; None: the setting's")
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS),
                   help="the generation term's weights, each a verifier in the first style")
    p.add_argument("--styles", nargs="+", choices=STYLES, default=list(DEFAULT_STYLES),
                   help=f"critique styles: the first at every lambda, the others at lambda {COMPUTE_LAMBDA}")
    p.add_argument("--verification-only", action="store_true",
                   help="stop after the verification table (no rationale pool, no best-of-N)")
    p.add_argument("--best-of-n", action=argparse.BooleanOptionalAction, default=True,
                   help="after the compute study, sample candidates and pick among them")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("train", args.train_problems), ("epochs", args.epochs)) if v is not None}
    return run(args.small, args.out, args.seed, list(sys.argv[1:] if argv is None else argv), overrides=overrides,
               lambdas=tuple(args.lambdas), styles=tuple(args.styles), verification_only=args.verification_only,
               with_best_of_n=args.best_of_n)


if __name__ == "__main__":
    sys.exit(main())

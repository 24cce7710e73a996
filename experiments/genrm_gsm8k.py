"""GenRM on real GSM8K data (Zhang et al. 2024's critiques in ../shared/data/genrm-critiques):
sft_verifier on SmolLM2-135M-Instruct, direct and CoT verification before and after training,
the solve rate, and best-of-N by the verifier against majority vote.

    python experiments/genrm_gsm8k.py                # three verifiers and best-of-N: about 3 hours on 2 CPU cores
    python experiments/genrm_gsm8k.py --lambdas 0.1 --no-best-of-n   # one verifier: about 80 minutes (2026-12-07)
    python experiments/genrm_gsm8k.py --small        # every stage on a few rows (what CI runs)

1. Data (<out>/data). The slice's two validation files, rm_*_batch_08_val (direct) and
   critiques_*_batch_16_val (CoT, the only CoT batch here), hold the same 127 GSM8K questions
   and rm_*_batch_00 none of them. Those questions are split by question_id (a seeded shuffle)
   into a CoT-training half and an evaluation half. Training rows: `direct_train` direct rows of
   rm_*_batch_00 (half Yes, half No), every CoT row of the training half, and the correct
   solutions of `generate` batch_00 questions as generation rows (GenRM's D_correct term).
   Everything evaluated is in the evaluation half: its batch_08_val direct rows
   (`direct_eval` of them, half correct; None: all), its first `cot_solutions` CoT solutions (half correct), its questions for the solve rate (the gold
   answer read from a correct solution). The script refuses to run when an evaluation question
   id or text is in a training row.
2. Verifiers: sft_verifier from SmolLM2-135M-Instruct at each lambda (eq. 7).
3. Every model: direct p(Yes) and CoT scores (eqs. 9-10, K = k_eval rationales) on the
   evaluation solutions, with accuracy and AUROC, and its greedy solve rate.
4. Best-of-N (unless --no-best-of-n): N solutions a problem sampled at temperature 1 from the
   lambda = 0.1 model, picked by its direct score, against majority vote, a random pick and the
   first sample.

Stages and evaluations are reused when finished (experiments/stages.py, <out>/eval/), so a
re-run continues where it stopped. Output in --out: results.md and results.json (every score,
rationale and reply).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import storage  # noqa: E402
from experiments.genrm_real import (LAMBDAS, best_of_n, cached, verifier_command, verify_and_solve,  # noqa: E402
                                    with_auroc_intervals)
from experiments.genrm_report import COMPUTE_LAMBDA, _ci, _commands, verification_table  # noqa: E402
from experiments.real_prefs import START, git_commit  # noqa: E402
from experiments.stages import experiment_parser, run_stage, write_report  # noqa: E402
from extension.critique_files import verification_rows  # noqa: E402
from shared_flags import SEED  # noqa: E402

CRITIQUES = os.path.join(os.path.dirname(REPO), "shared", "data", "genrm-critiques", "critiques")
BON_METHODS = ("verifier_direct", "majority", "random", "first")
SETTINGS = {
    # GSM8K rows are long: a problem and solution ~250 tokens, a critique ~200 more (up to 450),
    # hence 768 tokens and 256-token rationales and solutions.
    "real": dict(direct_train=160, direct_eval=None, cot_train=None, generate=60, val_rows=8, cot_solutions=32, k_eval=4,
                 solve_problems=40, bon_problems=30, ns=(4, 8), epochs=1, batch_size=8, lr=1e-4,
                 max_length=768, max_new_tokens=256, solve_tokens=256, max_steps=None),
    "small": dict(direct_train=4, direct_eval=4, cot_train=2, generate=2, val_rows=2, cot_solutions=2, k_eval=2,
                  solve_problems=2, bon_problems=2, ns=(2,), epochs=1, batch_size=2, lr=1e-4,
                  max_length=256, max_new_tokens=8, solve_tokens=8, max_steps=1),
}


def balanced(rows: list[dict], n: int | None, rng: random.Random) -> list[dict]:
    """n rows (None: all), half labelled Yes and half No where both have enough, in a seeded order."""
    rows = rows[:]
    rng.shuffle(rows)
    if n is None:
        return rows
    yes, no = [r for r in rows if r["label"]], [r for r in rows if not r["label"]]
    return yes[:n - n // 2] + no[:n // 2]


def split_data(found: dict, s: dict, seed: int) -> dict:
    """The training and evaluation parts (module docstring, 1.); raises ValueError if an
    evaluation question id or text is also in a training row."""
    from judges import final_answer
    rng = random.Random(seed)
    held = sorted({r["question_id"] for key in (("cot", "test"), ("direct", "test")) for r in found.get(key, [])})
    rng.shuffle(held)
    cot_questions = set(held[:len(held) // 2])
    cot_val = found.get(("cot", "test"), [])
    direct_pool = balanced(found.get(("direct", "train"), []), None, rng)
    direct_train = balanced(direct_pool, s["direct_train"], rng)
    used = {id(r) for r in direct_train}
    rest = [r for r in direct_pool if id(r) not in used]
    correct = {}
    for r in rest:
        if r["label"]:
            correct.setdefault(r["question_id"], r)
    parts = {"direct_train": direct_train,
             "cot_train": balanced([r for r in cot_val if r["question_id"] in cot_questions], s["cot_train"], rng),
             "generate": list(correct.values())[:s["generate"]],
             "val": [r for r in rest if r["question_id"] not in correct][:s["val_rows"]],
             "eval_direct": balanced([r for r in found.get(("direct", "test"), [])
                                      if r["question_id"] not in cot_questions], s["direct_eval"], rng),
             "eval_cot": balanced([r for r in cot_val if r["question_id"] not in cot_questions], s["cot_solutions"], rng)}
    gold = {}
    for key in (("direct", "test"), ("cot", "test")):
        for r in found.get(key, []):
            if r["label"] and r["question_id"] not in cot_questions and final_answer(r["solution"]) is not None:
                gold.setdefault(r["question_id"], {"question_id": r["question_id"], "question": r["question"],
                                                   "answer": final_answer(r["solution"])})
    parts["solve"] = [gold[q] for q in sorted(gold)][:s["solve_problems"]]
    trained = [r for part in ("direct_train", "cot_train", "generate", "val") for r in parts[part]]
    seen = {key for r in trained for key in (r["question_id"], r["question"])}
    shared = sorted({r["question_id"] for part in ("eval_direct", "eval_cot", "solve") for r in parts[part]
                     if r["question_id"] in seen or r["question"] in seen})
    if shared:
        raise ValueError(f"evaluation questions {shared[:5]} are also in a training row")
    return parts


def training_rows(parts: dict, names: tuple[str, ...]) -> list[dict]:
    """train.py's sft_verifier rows: a verify row for each direct or CoT row, a generate row for each
    generation row (the problem, then its correct solution)."""
    from extension.critiques import direct_prompt, verification_prompt
    rows = []
    for name in names:
        for r in parts[name]:
            if name == "generate":
                messages = [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["solution"]}]
            else:
                prompt = (verification_prompt if name == "cot_train" else direct_prompt)(r["question"], r["solution"])
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["target"]}]
            rows.append({"messages": messages, "task": "generate" if name == "generate" else "verify"})
    return rows


def write_data(parts: dict, out: str) -> str:
    data = storage.join(out, "data")
    for file, names in (("train.jsonl", ("direct_train", "cot_train", "generate")), ("test.jsonl", ("val",))):
        storage.write_text_atomic(storage.join(data, file),
                                  "".join(json.dumps(r) + "\n" for r in training_rows(parts, names)))
    return data


def items(rows: list[dict]) -> tuple[list[tuple[str, str]], list[bool]]:
    return [(r["question"], r["solution"]) for r in rows], [r["label"] for r in rows]


def markdown(r: dict) -> str:
    s, n = r["settings"], r["sizes"]
    lines = [f"# GenRM on GSM8K with {START} ({r['date']}, commit {r['commit']}, {r['wall_minutes']:.1f} min)", "",
             f"`{r['command']}`", "",
             f"Training rows: {n['direct_train']} direct (rm_*_batch_00), {n['cot_train']} CoT (the training half of "
             f"critiques_*_16_val's questions), {n['generate']} generation rows. Evaluated: {n['eval_direct']} direct "
             f"solutions (rm_*_batch_08_val) and {n['eval_cot']} CoT solutions (critiques_*_16_val) of the other half's "
             f"questions, and {n['solve']} of its problems for the solve rate. Question ids and texts of the evaluated "
             "rows are in no training row: checked.", "",
             f"CoT: mean p(Yes) over K = {s['k_eval']} rationales of up to {s['max_new_tokens']} tokens. Accuracy: "
             f"score > 0.5 is Yes. Solve rate: greedy, {s['solve_tokens']} tokens, final answer equal to the gold one.",
             "", *verification_table(r["models"])]
    if "best_of_n" in r:
        bon = r["best_of_n"]
        lines += ["", f"## Best-of-N ({bon['problems']} evaluation problems; candidates sampled at temperature 1 "
                      f"from the lambda = {COMPUTE_LAMBDA} model, picked by its direct score)", "",
                  "| N | " + " | ".join(f"{m.replace('_', ' ')} [95%]" for m in BON_METHODS) + " |",
                  "|---" * (len(BON_METHODS) + 1) + "|"]
        for k, t in bon["table"].items():
            lines.append(f"| {k} | " + " | ".join(f"{t[m]['accuracy']:.3f} {_ci(t[m])}" for m in BON_METHODS) + " |")
    return "\n".join(lines + _commands(r)) + "\n"


def run(small: bool, out: str | None, seed: int, argv: list[str], *, lambdas: tuple[float, ...] = LAMBDAS,
        folder: str = CRITIQUES, with_best_of_n: bool = True) -> int:
    began = time.perf_counter()
    s = SETTINGS["small" if small else "real"]
    out = out or f"runs/genrm-gsm8k{'-small' if small else ''}"
    out = out if "://" in out else os.path.abspath(out)
    parts = split_data(verification_rows(folder), s, seed)
    data = write_data(parts, out)
    stages = {f"lambda {lam}": f"verifier_lambda{lam}" for lam in lambdas}
    commands = {name: verifier_command(s, data, out, name, lam, seed)
                for lam, name in zip(lambdas, stages.values())}
    seconds = {name: run_stage(name, args, out) for name, args in commands.items()}
    models = {"start": START, **{label: storage.join(out, name) for label, name in stages.items()}}
    direct, cot = items(parts["eval_direct"]), items(parts["eval_cot"])
    evaluation = {name: cached(storage.join(out, "eval", re.sub(r"[^\w.]+", "_", name) + ".json"),
                               lambda path=path: verify_and_solve(path, direct, cot, parts["solve"], s, seed))
                  for name, path in models.items()}
    with_auroc_intervals(evaluation, direct[1], cot[1], seed)
    report = {"setting": "small" if small else "real", "settings": s, "seed": seed, "date": time.strftime("%Y-%m-%d"),
              "commit": git_commit(), "command": f"python experiments/genrm_gsm8k.py {shlex.join(argv)}",
              "sizes": {k: len(v) for k, v in parts.items()},
              "question_ids": {k: sorted({r["question_id"] for r in v}) for k, v in parts.items()},
              "commands": commands, "stage_seconds": seconds, "models": evaluation}
    verifier = models.get(f"lambda {COMPUTE_LAMBDA}")
    if with_best_of_n and verifier is not None and parts["solve"]:
        bon_settings = {**s, "bon_k": 1}
        report["best_of_n"] = best_of_n(verifier, {"test": parts["solve"]}, bon_settings, seed, out,
                                        modes=("direct",), rule=False)
    report["wall_minutes"] = (time.perf_counter() - began) / 60
    write_report(out, report, markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__)
    p.add_argument("--out", default=None, help="output folder; None: runs/genrm-gsm8k[-small]")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS),
                   help=f"the generation term's weights, a verifier each (best-of-N needs {COMPUTE_LAMBDA})")
    p.add_argument("--critiques", default=CRITIQUES, help="the genrm-critiques folder of zips")
    p.add_argument("--best-of-n", action=argparse.BooleanOptionalAction, default=True,
                   help=f"sample candidates from the lambda {COMPUTE_LAMBDA} model and pick among them (about 20 "
                        "minutes in the real setting)")
    args = p.parse_args(argv)
    return run(args.small, args.out, args.seed, list(sys.argv[1:] if argv is None else argv),
               lambdas=tuple(args.lambdas), folder=args.critiques, with_best_of_n=args.best_of_n)


if __name__ == "__main__":
    sys.exit(main())

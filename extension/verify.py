"""Score solutions with a GenRM-CoT verifier, or pick the best of N candidates.

    python extension/verify.py --model runs/genrm-demo --input pairs.jsonl --output scores.jsonl
    python extension/verify.py --model runs/genrm-demo --input candidates.jsonl --best-of-n --output picks.jsonl
    python extension/verify.py --model you/genrm --input pairs.jsonl --fixed-k 32 --use-gpu

--input is a JSONL file of {"question", "solution"} rows (scoring) or {"question",
"candidates": [solution, ...]} rows (--best-of-n); an optional "answer" column lets the
command report how often the pick is right, beside a random pick, a majority vote over
the candidates' final answers (self-consistency) and the first candidate alone. Each solution is scored with
extension/verifier.py: adaptive compute by default (rounds of --step rationales from
--k-min to --k-max, stopping when the variance of the scores is below --tau), or exactly
--fixed-k rationales; --mode direct asks for Yes/No with no rationale. Output rows add
"score", "k" and "variance" (per candidate, plus "pick", for --best-of-n); the file is
written whole, then moved into place. --model is a model folder, Hub name or train.py run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tqdm import tqdm  # noqa: E402

import chat_templates  # noqa: E402
import storage  # noqa: E402
from shared_flags import SEED  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="the verifier: model folder, Hub name, .gguf file, packaged model name or train.py run")
    chat_templates.add_flag(p)
    p.add_argument("--input", required=True, help="JSONL of question/solution (or question/candidates) rows")
    p.add_argument("--output", required=True, help="JSONL to write (local or s3://)")
    p.add_argument("--best-of-n", action="store_true", help="rows hold candidates; pick the highest-scored one")
    p.add_argument("--mode", choices=("cot", "direct"), default="cot", help="rationale then Yes/No, or Yes/No only")
    p.add_argument("--k-min", type=int, default=8, help="rationales in the first round")
    p.add_argument("--k-max", type=int, default=32, help="most rationales per solution")
    p.add_argument("--step", type=int, default=8, help="rationales per further round")
    p.add_argument("--tau", type=float, default=0.05, help="stop once the variance of the scores is below this")
    p.add_argument("--fixed-k", type=int, default=None, help="exactly this many rationales (no adaptive stopping)")
    p.add_argument("--temperature", type=float, default=0.7, help="rationale sampling temperature")
    p.add_argument("--top-p", type=float, default=0.95, help="rationale nucleus sampling")
    p.add_argument("--max-new-tokens", type=int, default=256, help="rationale length budget")
    p.add_argument("--seed", type=int, default=SEED, help="sampling seed")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--use-gpu", action="store_true", help="run on CUDA")
    return p


def read_rows(path: str, best_of_n: bool, limit: int | None) -> list[dict]:
    """Rows of the input file, checked: one sentence naming the row and field otherwise."""
    rows = []
    with io.BytesIO(storage.read_bytes(path)) as f:     # read whole, with retries for a URL
        for number, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}, row {number}: not UTF-8 text.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, row {number}: not valid JSON ({e.msg}).") from None
            fields = ("question", "candidates") if best_of_n else ("question", "solution")
            for key in fields:
                value = row.get(key) if isinstance(row, dict) else None
                ok = (isinstance(value, list) and value and all(isinstance(v, str) for v in value)) \
                    if key == "candidates" else (isinstance(value, str) and value.strip())
                if not ok:
                    kind = "a non-empty list of strings" if key == "candidates" else "a non-empty string"
                    raise ValueError(f"{path}, row {number}, field {key}: expected {kind}.")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    return rows


def main(argv: list[str] | None = None) -> int:
    from extension.selection import best_index, selection_outcomes
    from extension.verifier import adaptive_verify, compute_verifier_scores
    from errors import UserError
    from judges import final_answer
    from logs import configure_logging
    from models import load_trained

    args = build_parser().parse_args(argv)
    configure_logging(verbose=False)
    try:
        if not 1 <= args.k_min <= args.k_max or args.step < 1 or (args.fixed_k is not None and args.fixed_k < 1):
            raise ValueError("--k-min, --k-max, --step and --fixed-k must be at least 1, with --k-min <= --k-max.")
        rows = read_rows(args.input, args.best_of_n, args.limit)
        model, tokenizer = load_trained(args.model, chat_template=args.chat_template)
    except (ValueError, UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to("cuda" if args.use_gpu else "cpu")
    sampling = dict(mode=args.mode, temperature=args.temperature, top_p=args.top_p,
                    max_new_tokens=args.max_new_tokens)

    def score(question: str, solution: str, seed: int) -> dict:
        draw = iter(range(seed, seed + 10_000))      # a new seed a round, so rounds sample new rationales
        if args.mode == "direct":
            value = compute_verifier_scores(model, tokenizer, question, solution, **sampling)[0]
            return {"score": value, "k": 1, "variance": 0.0}
        def sample(n: int) -> list[float]:
            return compute_verifier_scores(model, tokenizer, question, solution, k=n, seed=next(draw), **sampling)
        k_min = k_max = args.fixed_k if args.fixed_k else None
        result = adaptive_verify(sample, k_min or args.k_min, k_max or args.k_max, args.step,
                                 -1.0 if args.fixed_k else args.tau)
        return {"score": result.score, "k": result.k, "variance": result.variance}

    out, ks, judged = [], [], []
    for i, row in enumerate(tqdm(rows, desc="verifying", unit="row")):
        if not args.best_of_n:
            result = score(row["question"], row["solution"], args.seed + 1000 * i)
            ks.append(result["k"])
            out.append({**row, **result})
            continue
        results = [score(row["question"], c, args.seed + 1000 * i + 100 * j) for j, c in enumerate(row["candidates"])]
        ks += [r["k"] for r in results]
        scores = [r["score"] for r in results]
        pick = best_index(scores)
        record = {**row, "scores": scores, "ks": [r["k"] for r in results], "pick": pick,
                  "picked_solution": row["candidates"][pick]}
        if row.get("answer") is not None:
            answers = [final_answer(c) for c in row["candidates"]]
            judged.append({"answers": answers, "gold": final_answer(f"The answer is {row['answer']}."),
                           "scores": scores})
            record["picked_correct"] = answers[pick] == judged[-1]["gold"]
        out.append(record)
    storage.write_text_atomic(args.output, "".join(json.dumps(r) + "\n" for r in out))
    summary = {"rows": len(out), "mean_k": sum(ks) / len(ks), "output": args.output}
    if judged:
        outcomes = selection_outcomes(judged)
        summary.update({f"{name}_accuracy": sum(outcomes[method]) / len(judged) for name, method in (
            ("best_of_n", "verifier"), ("random_pick", "random"), ("majority_vote", "majority"),
            ("first_sample", "first"))})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

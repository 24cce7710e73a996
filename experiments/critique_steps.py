"""What the CoT rationales of a genrm_real run say, step line by step line: whether the value a
verifier computes is right, whether its "This is correct/wrong" follows its own two numbers,
and whether its final Yes/No follows its step verdicts (docs/genrm.md, the bug hunt).

    python experiments/critique_steps.py runs/genrm-real/results.json      # every model in the report
"""
from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from extension.critiques import CHECKED_LINE, QUESTION, apply_op  # noqa: E402


def step_summary(rationales: list[str]) -> dict:
    """Counts over the rationales' step lines and final answers. A written slip is a step line
    whose written number is not the true result; it is copied when the verifier's own value
    equals the written (wrong) number, so that the slip passes as correct."""
    lines = value_right = verdict_follows = finals = final_follows = slips = copied = 0
    for r in rationales:
        verdicts = []
        for a, op, b, value, target, verdict in CHECKED_LINE.findall(r):
            lines += 1
            true = apply_op(int(a), op, int(b))
            value_right += int(value) == true
            verdict_follows += (verdict == "correct") == (value == target)
            if int(target) != true:
                slips += 1
                copied += value == target
            verdicts.append(verdict)
        if QUESTION in r:
            finals += 1
            final_follows += r.split(QUESTION)[1].strip().startswith("Yes") == all(v == "correct" for v in verdicts)
    return {"rationales": len(rationales), "step_lines": lines, "value_right": value_right,
            "verdict_follows_its_numbers": verdict_follows, "with_a_final_answer": finals,
            "final_follows_the_steps": final_follows, "written_slips": slips, "slips_copied": copied}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", help="results.json files of experiments/genrm_real.py")
    for path in p.parse_args(argv).reports:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        for name, e in report["models"].items():
            c = step_summary([r for per_solution in e["cot"]["rationales"] for r in per_solution])
            print(f"{path} | {name}: {c['step_lines']} step lines, value right {c['value_right']}, verdict follows "
                  f"its numbers {c['verdict_follows_its_numbers']}; final Yes/No follows the steps "
                  f"{c['final_follows_the_steps']} of {c['with_a_final_answer']} ({c['rationales']} rationales, "
                  f"{len(e['cot']['rationales'])} solutions)")
        bon = report.get("best_of_n", {})
        if "cot_rationales" in bon.get("scores", {}):
            for name, c in candidate_summaries(bon, report["question_ids"]["test"]).items():
                print(f"{path} | best-of-N candidates, {name}: {c['written_slips']} step lines on a written slip, "
                      f"the verifier's value copies it in {c['slips_copied']}; value right {c['value_right']} of "
                      f"{c['step_lines']} step lines ({c['rationales']} rationales)")
    return 0


def candidate_summaries(bon: dict, test_ids: list[int]) -> dict:
    """step_summary over the best-of-N candidates' CoT rationales, for the candidates whose final
    answer is right and for those whose answer is wrong."""
    from experiments.genrm_real import answer_of, read_problems
    gold = {p["question_id"]: str(p["answer"]) for p in read_problems("test.jsonl")}
    groups = {"right answer": [], "wrong answer": []}
    for qid, candidates, rationales in zip(test_ids, bon["candidates"], bon["scores"]["cot_rationales"]):
        for c, rs in zip(candidates, rationales):
            groups["right answer" if answer_of(c) == gold[qid] else "wrong answer"].extend(rs)
    return {name: step_summary(rs) for name, rs in groups.items()}


if __name__ == "__main__":
    sys.exit(main())

"""Verification examples for problems with known answers: the GenRM-CoT training rows the
bundled task (and any data set of worked arithmetic solutions) provides without an LLM.

    verification_prompt(question, solution)  ->  the verify row's user turn
    rule_based_critique(solution)            ->  (critique ending in the Yes/No question, label)
    direct_prompt(question, solution)        ->  the same, asking Yes/No with no rationale

The prompt has the layout of the genrm-critiques data (data_preparation.py): the problem after
"Q: ", "A: Let's think step by step.", the solution, then the cue "Verification: Let's
verify step by step.". The critique re-does every "a op b = c" of the solution, one line a
step (the result first, then the solution's number and the verdict), and ends with "Verification: Is the answer correct (Yes/No)? Yes" when every step
holds, "... No" otherwise: a step-by-step rationale a verifier can learn to produce, in place
of the LLM-written critiques of Zhang et al. (2024).
"""
from __future__ import annotations

import re

COT_CUE = "Verification: Let's verify step by step."
QUESTION = "Verification: Is the answer correct (Yes/No)?"
STEP = re.compile(r"(-?\d+)\s*([+\-*/x×])\s*(-?\d+)\s*=\s*(-?\d+)")
# A step line as rule_based_critique writes it in the "check" and "inverse" styles, read back
# from generated rationales (experiments/critique_steps.py): operands, value, target, verdict.
CHECKED_LINE = re.compile(r"Step \d+: (-?\d+) ([+\-*/x×]) (-?\d+) gives (-?\d+); (?:it should give|the solution wrote) "
                          r"(-?\d+)\. This is (correct|wrong)")


def verification_prompt(question: str, solution: str) -> str:
    return f"Q: {question.strip()}\nA: Let's think step by step.\n{solution.strip()}\n{COT_CUE}"


def direct_prompt(question: str, solution: str) -> str:
    """Direct verification: the Yes/No question in place of the rationale's cue."""
    return verification_prompt(question, solution).rsplit("\n", 1)[0] + "\n" + QUESTION


def apply_op(a: int, op: str, b: int) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*x×":
        return a * b
    return a / b if b else float("nan")


STYLES = ("check", "verdict_first", "inverse")
_INVERSE = {"+": "-", "-": "+"}     # a + b = c holds iff c - b = a; a - b = c iff c + b = a


def rule_based_critique(solution: str, style: str = "check") -> tuple[str, str]:
    """(critique, "Yes" | "No"). Raises ValueError when the solution has no "a op b = c" step.

    style "check" redoes each step before judging it: "Step 1: 70 - 44 gives 26; the solution
    wrote 25. This is wrong." The result is computed where nothing written follows "70 - 44"
    to copy, and the verdict compares two numbers already in the text. "verdict_first" (the
    format until 2026-12-03) judges right after copying the step: "Step 1: 70 - 44 = 25. This
    is wrong: 70 - 44 = 26.", so the verdict comes before any computation is written.
    "inverse" undoes each + and - step from the solution's own result, a sum that appears
    nowhere in the text to copy: "Step 1: 25 + 44 gives 69; it should give 70. This is
    wrong." (a * b = c is checked forwards, as in "check")."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {', '.join(STYLES)}, got {style!r}")
    lines, all_right = [], True
    steps = STEP.findall(solution)
    if not steps:
        raise ValueError("solution: no 'a op b = c' step to verify")
    for k, (a, op, b, c) in enumerate(steps, start=1):
        value = apply_op(int(a), op, int(b))
        right = value == int(c)
        all_right &= right
        shown = int(value) if value == int(value) else round(value, 4)
        if style == "inverse" and op in _INVERSE:
            undone = apply_op(int(c), _INVERSE[op], int(b))
            lines.append(f"Step {k}: {c} {_INVERSE[op]} {b} gives {int(undone)}; it should give {a}. "
                         f"This is {'correct' if right else 'wrong'}.")
        elif style in ("check", "inverse"):
            lines.append(f"Step {k}: {a} {op} {b} gives {shown}; the solution wrote {c}. "
                         f"This is {'correct' if right else 'wrong'}.")
        elif right:
            lines.append(f"Step {k}: {a} {op} {b} = {c}. This is correct.")
        else:
            lines.append(f"Step {k}: {a} {op} {b} = {c}. This is wrong: {a} {op} {b} = {shown}.")
    label = "Yes" if all_right else "No"
    return "\n".join(lines + [f"{QUESTION} {label}"]), label

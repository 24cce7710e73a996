"""Verification examples for problems with known answers: the GenRM-CoT training rows the
bundled task (and any data set of worked arithmetic solutions) provides without an LLM.

    verification_prompt(question, solution)  ->  the verify row's user turn
    rule_based_critique(solution)            ->  (critique ending in the Yes/No question, label)

The prompt has the layout of the genrm-critiques data (data_preparation.py): the problem after
"Q: ", "A: Let's think step by step.", the solution, then the cue "Verification: Let's
verify step by step.". The critique re-does every "a op b = c" of the solution, one line a
step, and ends with "Verification: Is the answer correct (Yes/No)? Yes" when every step
holds, "... No" otherwise: a step-by-step rationale a verifier can learn to produce, in place
of the LLM-written critiques of Zhang et al. (2024).
"""
from __future__ import annotations

import re

COT_CUE = "Verification: Let's verify step by step."
QUESTION = "Verification: Is the answer correct (Yes/No)?"
_STEP = re.compile(r"(-?\d+)\s*([+\-*/x×])\s*(-?\d+)\s*=\s*(-?\d+)")


def verification_prompt(question: str, solution: str) -> str:
    return f"Q: {question.strip()}\nA: Let's think step by step.\n{solution.strip()}\n{COT_CUE}"


def _apply(a: int, op: str, b: int) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*x×":
        return a * b
    return a / b if b else float("nan")


def rule_based_critique(solution: str) -> tuple[str, str]:
    """(critique, "Yes" | "No"). Raises ValueError when the solution has no "a op b = c" step."""
    lines, all_right = [], True
    steps = _STEP.findall(solution)
    if not steps:
        raise ValueError("solution: no 'a op b = c' step to verify")
    for k, (a, op, b, c) in enumerate(steps, start=1):
        value = _apply(int(a), op, int(b))
        if value == int(c):
            lines.append(f"Step {k}: {a} {op} {b} = {c}. This is correct.")
        else:
            all_right = False
            shown = int(value) if value == int(value) else round(value, 4)
            lines.append(f"Step {k}: {a} {op} {b} = {c}. This is wrong: {a} {op} {b} = {shown}.")
    label = "Yes" if all_right else "No"
    return "\n".join(lines + [f"{QUESTION} {label}"]), label

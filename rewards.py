"""Rewards for online RL (--training-type grpo): rule-based reward functions, registered by
name, and reward models, combined with weights into one scalar per completion.

    rewards = Rewards.from_config(c)          # --reward-funcs, --reward-weights, --reward-model
    total, parts = rewards.score(prompts, completions, references, num_tokens, max_new_tokens)

A reward function scores one completion:

    fn(prompt: list[dict], completion: str, reference: str | None, num_tokens: int,
       max_new_tokens: int) -> float

and registers itself with @reward("name"); that line is all a new function needs. A reward
model is any judges.make_judge spec that scores (prompt, reply) pairs: a bt run or
AutoModelForSequenceClassification folder / Hub name, or openai:MODEL for an OpenAI-
compatible endpoint. The combined reward is sum_k w_k * r_k over the functions and the
model (weight --reward-model-weight).
"""
from __future__ import annotations

import re
from typing import Callable

from config import Config
from errors import UserError
from judges import final_answer

REWARD_FUNCTIONS: dict[str, Callable] = {}


class RewardError(UserError, ValueError):
    """A reward cannot be computed for this data or these flags; one sentence."""


def reward(name: str):
    """Register a reward function under `name` (the value --reward-funcs takes)."""
    def register(fn):
        REWARD_FUNCTIONS[name] = fn
        return fn
    return register


@reward("correctness")
def correctness(prompt, completion: str, reference: str | None, num_tokens: int, max_new_tokens: int) -> float:
    """1 when the completion's final answer ("The answer is N" or \\boxed{N}) equals the
    reference's, else 0 (also 0 when the completion states no answer)."""
    expected = final_answer(reference)
    if expected is None:
        raise RewardError(f"The correctness reward needs a reference with a final answer (\"The answer is N\" "
                          f"or \\boxed{{N}}); this one has none: {str(reference)[:80]!r}.")
    return float(final_answer(completion) == expected)


_FORMAT = re.compile(r"(?:[Tt]he (?:final )?answer is\s*:?\s*\$?\s*-?[\d,]*\.?\d+\.?|\\boxed\{[^}]*\})\s*$")


@reward("format")
def answer_format(prompt, completion: str, reference, num_tokens: int, max_new_tokens: int) -> float:
    """1 when the completion ends with its final answer ("... The answer is N." or
    \\boxed{N}) and nothing after it, else 0."""
    return float(bool(_FORMAT.search(completion.strip())))


@reward("length")
def brevity(prompt, completion: str, reference, num_tokens: int, max_new_tokens: int) -> float:
    """1 - num_tokens / max_new_tokens: shorter completions score higher (0 for one that used
    the whole budget). A length control, weighted against the task reward."""
    return 1.0 - num_tokens / max_new_tokens


def parse_reward_funcs(funcs: str, weights: str | None) -> list[tuple[str, float]]:
    """--reward-funcs "correctness,format" and --reward-weights "1,0.1" -> [(name, weight)]."""
    names = [n.strip() for n in funcs.split(",") if n.strip()] if funcs else []
    unknown = [n for n in names if n not in REWARD_FUNCTIONS]
    if unknown:
        raise RewardError(f"--reward-funcs: unknown reward function {unknown[0]!r} "
                          f"(registered: {', '.join(sorted(REWARD_FUNCTIONS))}).")
    if weights is None:
        return [(n, 1.0) for n in names]
    try:
        values = [float(w) for w in weights.split(",")]
    except ValueError:
        raise RewardError(f"--reward-weights must be comma-separated numbers (got {weights!r}).") from None
    if len(values) != len(names):
        raise RewardError(f"--reward-weights has {len(values)} value(s) for {len(names)} reward function(s) "
                          f"in --reward-funcs.")
    return list(zip(names, values))


class Rewards:
    """Weighted reward functions plus an optional reward model (a judge from judges.py)."""

    def __init__(self, funcs: list[tuple[str, float]], model=None, model_weight: float = 1.0):
        if not funcs and model is None:
            raise RewardError("GRPO needs a reward: --reward-funcs and/or --reward-model.")
        self.funcs, self.model, self.model_weight = funcs, model, model_weight

    @classmethod
    def from_config(cls, c: Config) -> "Rewards":
        model = None
        if c.grpo.reward_model:
            from judges import make_judge
            model = make_judge(c.grpo.reward_model, base_url=c.win_rate.judge_base_url,
                               api_key_env=c.win_rate.judge_api_key_env, max_length=c.data.max_length)
        return cls(parse_reward_funcs(c.grpo.reward_funcs, c.grpo.reward_weights), model, c.grpo.reward_model_weight)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.funcs] + (["model"] if self.model is not None else [])

    def to(self, device) -> "Rewards":
        if hasattr(self.model, "to"):
            self.model.to(device)
        return self

    def score(self, prompts: list[list[dict]], completions: list[str], references: list[str | None],
              num_tokens: list[int], max_new_tokens: int) -> tuple[list[float], dict[str, list[float]]]:
        """The weighted total per completion and each component's raw (unweighted) values."""
        parts = {name: [REWARD_FUNCTIONS[name](p, c, r, n, max_new_tokens)
                        for p, c, r, n in zip(prompts, completions, references, num_tokens)]
                 for name, _ in self.funcs}
        weights = dict(self.funcs)
        if self.model is not None:
            parts["model"] = [float(s) for s in self.model.score(prompts, completions, references)]
            weights["model"] = self.model_weight
        total = [sum(weights[name] * parts[name][i] for name in parts) for i in range(len(completions))]
        return total, parts

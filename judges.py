"""Judges score (prompt, reply) pairs; win rate compares two models' replies with a judge.

    judge = make_judge("runs/bt-export")           # a reward model folder or Hub name
    judge = make_judge("openai:nvidia/llama-3.1-nemotron-70b-reward")   # an endpoint
    judge = make_judge("correctness")              # final answer equals the reference's
    judge = make_judge("length")                   # longer is better: a bias probe
    scores = judge.score(prompts, replies, references)

Win rate (the seed's metric against Qwen2.5-0.5B-Instruct): for each prompt the judge scores
the policy's reply and the reference model's reply; a higher policy score is a win, an equal
score a tie (counted as half), so win rate = (wins + ties / 2) / N.

The endpoint judge speaks the OpenAI chat-completions protocol as NVIDIA's reward models do:
the conversation (prompt + the reply as the last assistant message) goes in, the reply's
`choices[0].message.content` comes back as "reward:<float>" (or "name:<float>,..." pairs, of
which "reward" or else the first is used). The key comes from an environment variable, never
from a flag or a file.
"""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from errors import UserError
from shared_flags import BATCH_SIZE, JUDGE_API_KEY_ENV, JUDGE_BASE_URL, MAX_LENGTH

_ANSWER = re.compile(r"[Tt]he (?:final )?answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)|\\boxed\{\s*\$?(-?[\d,]*\.?\d+)\s*\}")


class JudgeError(UserError, RuntimeError):
    """A judge cannot be built or does not answer; the message is one sentence."""


def final_answer(text: str | None) -> str | None:
    """The last "The answer is N" / "\\boxed{N}" number in a text, normalised ("1,000" -> "1000",
    "2.50" -> "2.5"), else None."""
    matches = _ANSWER.findall(text or "")
    if not matches:
        return None
    number = (matches[-1][0] or matches[-1][1]).replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number


class LengthJudge:
    """Score = characters in the reply. Not a quality judge: it measures how far a win rate
    can be bought with verbosity (the length bias seed 003 reports for plain SFT)."""
    name = "length"

    def score(self, prompts, replies, references=None) -> list[float]:
        return [float(len(r)) for r in replies]


class CorrectnessJudge:
    """Score = 1 when the reply's final answer equals the reference reply's, else 0: the
    rule-based judge for problems with known answers (the bundled task, GSM8K-style data)."""
    name = "correctness"

    def score(self, prompts, replies, references) -> list[float]:
        scores = []
        for reply, reference in zip(replies, references):
            expected = final_answer(reference)
            if expected is None:
                raise JudgeError(f"The correctness judge needs references with a final answer "
                                 f"(\"The answer is N\" or \\boxed{{N}}); this one has none: {reference[:80]!r}.")
            scores.append(float(final_answer(reply) == expected))
        return scores


class RewardModelJudge:
    """Score = a scalar reward model's reward of the conversation (e.g. a `bt` run, exported
    with upload_to_hub.py or given as its run folder / .ckpt, or a Hub reward model)."""

    def __init__(self, name_or_path: str, max_length: int = MAX_LENGTH, batch_size: int = BATCH_SIZE):
        from models import load_trained
        self.name = name_or_path
        self.model, self.tokenizer = load_trained(name_or_path, kind="reward")
        self.max_length, self.batch_size = max_length, batch_size

    def to(self, device):
        self.model.to(device)
        return self

    def score(self, prompts, replies, references=None) -> list[float]:
        from reward_model import score_conversations
        conversations = [p + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies)]
        return score_conversations(self.model, self.tokenizer, conversations, max_length=self.max_length,
                                   batch_size=self.batch_size)


class EndpointJudge:
    """Score = the reward an OpenAI-compatible endpoint returns for the conversation."""
    batch_size = 1      # one request a reply: judge_pairs' progress bar moves a reply at a time

    def __init__(self, model: str, base_url: str = JUDGE_BASE_URL, api_key_env: str = JUDGE_API_KEY_ENV,
                 retries: int = 4, timeout: float = 60.0):
        self.name = f"openai:{model}"
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.api_key_env, self.retries, self.timeout = api_key_env, retries, timeout
        if not os.environ.get(api_key_env):
            raise JudgeError(f"The endpoint judge reads its API key from ${api_key_env}, which is not set "
                             f"(choose another variable with --judge-api-key-env).")

    def _post(self, messages: list[dict]) -> dict:
        body = json.dumps({"model": self.model, "messages": messages}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ[self.api_key_env]}"}
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                # Rate limits and server errors pass; a 4xx means the request itself is wrong.
                if (e.code != 429 and e.code < 500) or attempt == self.retries:
                    raise JudgeError(f"Judge endpoint {self.url} answered HTTP {e.code}: "
                                     f"{e.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    raise JudgeError(f"Judge endpoint {self.url} cannot be reached: {e}.") from None
            time.sleep(min(30.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")

    def score(self, prompts, replies, references=None) -> list[float]:
        scores = []
        for prompt, reply in zip(prompts, replies):
            answer = self._post(prompt + [{"role": "assistant", "content": reply}])
            try:
                content = answer["choices"][0]["message"]["content"]
                pairs = dict(p.split(":", 1) for p in content.replace(" ", "").split(","))
                scores.append(float(pairs.get("reward", next(iter(pairs.values())))))
            except (KeyError, IndexError, TypeError, ValueError):
                raise JudgeError(f"Judge endpoint {self.url} returned no reward in its reply: "
                                 f"{json.dumps(answer)[:200]}") from None
        return scores


def make_judge(spec: str, *, base_url: str = JUDGE_BASE_URL, api_key_env: str = JUDGE_API_KEY_ENV,
               max_length: int = MAX_LENGTH):
    """--judge value -> judge: length, correctness, openai:MODEL, or a reward model path / Hub name."""
    if spec == "length":
        return LengthJudge()
    if spec == "correctness":
        return CorrectnessJudge()
    if spec.startswith("openai:"):
        return EndpointJudge(spec.removeprefix("openai:"), base_url, api_key_env)
    return RewardModelJudge(spec, max_length=max_length)


@dataclass
class WinRate:
    rate: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def outcome(policy_score: float, reference_score: float) -> str:
    if policy_score > reference_score:
        return "win"
    return "tie" if policy_score == reference_score else "loss"


def win_rate(policy_scores: list[float], reference_scores: list[float]) -> WinRate:
    """(wins + ties / 2) / N over prompts; ties count half."""
    outcomes = [outcome(p, r) for p, r in zip(policy_scores, reference_scores, strict=True)]
    wins, ties = outcomes.count("win"), outcomes.count("tie")
    n = len(outcomes)
    return WinRate((wins + 0.5 * ties) / n if n else float("nan"), wins, ties, n - wins - ties)


def judge_pairs(judge, prompts: list[list[dict]], references: list[str | None], policy_replies: list[str],
                reference_replies: list[str]) -> list[dict]:
    """Score both replies of every prompt; one JSON-ready record per prompt. The judge is
    called on slices of its own batch_size (all rows at once if it has none), which are the
    batches it would score anyway, so that a progress bar can count the replies judged."""
    from generation import progress_bar
    step = max(1, getattr(judge, "batch_size", len(prompts)))
    bar = progress_bar(desc="judging", total=2 * len(prompts), unit="reply")

    def scores(replies: list[str]) -> list[float]:
        out = []
        for i in range(0, len(prompts), step):
            out += judge.score(prompts[i:i + step], replies[i:i + step], references[i:i + step])
            bar.update(len(replies[i:i + step]))
        return out

    policy_scores, reference_scores = scores(policy_replies), scores(reference_replies)
    bar.close()
    return [{"prompt": p, "reference": ref, "policy_reply": a, "reference_reply": b, "policy_score": sa,
             "reference_score": sb, "outcome": outcome(sa, sb)}
            for p, ref, a, b, sa, sb in zip(prompts, references, policy_replies, reference_replies,
                                            policy_scores, reference_scores)]


def summarize(records: list[dict]) -> WinRate:
    return win_rate([r["policy_score"] for r in records], [r["reference_score"] for r in records])

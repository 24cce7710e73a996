"""rewards.py: the reward-function registry, weights, and combination with a reward model."""
import pytest

from rewards import REWARD_FUNCTIONS, RewardError, Rewards, parse_reward_funcs, reward

P = [{"role": "user", "content": "Mia has 3 apples and buys 4 more. How many?"}]


def test_correctness_format_and_length():
    ref = "3 + 4 = 7. The answer is 7."
    c = REWARD_FUNCTIONS["correctness"]
    assert c(P, "3 + 4 = 7. The answer is 7.", ref, 10, 100) == 1.0
    assert c(P, "So \\boxed{7}", ref, 10, 100) == 1.0
    assert c(P, "The answer is 8.", ref, 10, 100) == 0.0
    assert c(P, "no idea", ref, 10, 100) == 0.0
    with pytest.raises(RewardError, match="reference with a final answer"):
        c(P, "The answer is 7.", "seven", 10, 100)
    f = REWARD_FUNCTIONS["format"]
    assert f(P, "3 + 4 = 7. The answer is 7.", None, 10, 100) == 1.0
    assert f(P, "The answer is 7. Anything else?", None, 10, 100) == 0.0
    assert f(P, "seven", None, 10, 100) == 0.0
    assert REWARD_FUNCTIONS["length"](P, "x", None, 25, 100) == pytest.approx(0.75)


def test_parse_reward_funcs():
    assert parse_reward_funcs("correctness, format", None) == [("correctness", 1.0), ("format", 1.0)]
    assert parse_reward_funcs("correctness,format", "1,0.1") == [("correctness", 1.0), ("format", 0.1)]
    assert parse_reward_funcs("", None) == []
    with pytest.raises(RewardError, match="unknown reward function 'speed'"):
        parse_reward_funcs("correctness,speed", None)
    with pytest.raises(RewardError, match="1 value\\(s\\) for 2"):
        parse_reward_funcs("correctness,format", "1")
    with pytest.raises(RewardError, match="comma-separated numbers"):
        parse_reward_funcs("correctness", "one")


class ConstantJudge:
    """Scores every reply by its length in characters, in place of a reward model's score."""
    def score(self, prompts, replies, references=None):
        return [float(len(r)) for r in replies]


def test_weighted_sum_with_a_reward_model_and_a_registered_function():
    @reward("shouts")
    def shouts(prompt, completion, reference, num_tokens, max_new_tokens):
        return float(completion.endswith("!"))
    try:
        r = Rewards([("correctness", 2.0), ("shouts", 0.5)], ConstantJudge(), model_weight=0.1)
        total, parts = r.score([P, P], ["The answer is 7!", "The answer is 6."], ["The answer is 7."] * 2,
                               [5, 5], 100)
        # 2 * 1 + 0.5 * 1 + 0.1 * 16 = 4.1; 2 * 0 + 0.5 * 0 + 0.1 * 16 = 1.6
        assert total == pytest.approx([4.1, 1.6])
        assert parts == {"correctness": [1.0, 0.0], "shouts": [1.0, 0.0], "model": [16.0, 16.0]}
        assert r.names == ["correctness", "shouts", "model"]
    finally:
        del REWARD_FUNCTIONS["shouts"]
    with pytest.raises(RewardError, match="needs a reward"):
        Rewards([], None)

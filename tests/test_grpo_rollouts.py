"""The GRPO rollout path samples what transformers' generate samples: generation.sample_token_ids at
temperature 0, called as rollouts.py calls it (prompt ids from tokenization.tokenize_prompt_rows, several
prompts a call; greedy, as rollouts.grpo_eval samples, since transformers refuses several greedy sequences a
prompt), gives token for token the greedy model.generate of each prompt on its own (no padding), cut after
its first end-of-turn token. On the bundled model and problems: prompts of 30 to 48 tokens, so one call
left-pads them."""
from types import SimpleNamespace

import pytest
import torch

from conftest import EMBEDDED_MODEL, REPO

MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def model():
    from models import load_causal_lm
    return load_causal_lm(str(EMBEDDED_MODEL)).eval()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    from custom_dataset import CustomDataset
    from tokenization import tokenize_prompt_rows
    rows, _ = tokenize_prompt_rows(CustomDataset(str(REPO / "embedded" / "data" / "problems"), "train", "grpo",
                                                 length=6), tokenizer, 512)
    return [r["prompt_ids"] for r in rows]


def greedy_alone(model, prompt_ids, eos_id, pad_id):
    """model.generate, greedy, one prompt a call: each completion up to and including its first eos."""
    out = []
    for ids in prompt_ids:
        x = torch.tensor([ids])
        new = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                             eos_token_id=eos_id, pad_token_id=pad_id)[0, len(ids):].tolist()
        out.append(new[:new.index(eos_id) + 1] if eos_id in new else new)
    return out


def rollout_greedy(model, tokenizer, prompt_ids):
    """sample_token_ids as rollouts.rollout calls it, at temperature 0: one completion a prompt."""
    from generation import sample_token_ids
    from rollouts import sample_seed
    return sample_token_ids(model, tokenizer, prompt_ids, max_new_tokens=MAX_NEW_TOKENS, num_return_sequences=1,
                            temperature=0.0, top_p=1.0, seed=sample_seed(0, 0, 0, 0), progress="rollouts 1/1")


def test_greedy_rollouts_are_generates_tokens(model, tokenizer, prompt_ids):
    """The bundled base model never writes <|im_end|> (the end-of-turn token) here, so every completion
    runs to the budget; some end a document with <|endoftext|>, which is also the pad token, and go on:
    a sampled token like any other, which the update must score where it was sampled."""
    assert len({len(ids) for ids in prompt_ids}) > 1                   # the call left-pads
    expected = greedy_alone(model, prompt_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert all(len(c) == MAX_NEW_TOKENS for c in expected)
    assert any(tokenizer.pad_token_id in c for c in expected)
    assert rollout_greedy(model, tokenizer, prompt_ids) == [[c] for c in expected]


def test_rows_that_stop_at_the_end_of_turn_token(model, prompt_ids):
    """With <|endoftext|> as the end-of-turn token (and, as SmolLM2's tokenizer has it, as the pad token
    too) some completions stop there before the budget while others in the same call run on to it:
    each stops at its own end-of-turn token, which it keeps, and nothing after it."""
    from models import load_tokenizer
    end = load_tokenizer(str(EMBEDDED_MODEL)).convert_tokens_to_ids("<|endoftext|>")
    stand_in = SimpleNamespace(eos_token_id=end, pad_token_id=end)     # all that sample_token_ids reads
    expected = greedy_alone(model, prompt_ids, end, end)
    stopped = [c for c in expected if c[-1] == end]
    assert stopped and all(len(c) < MAX_NEW_TOKENS for c in stopped)
    assert any(end not in c and len(c) == MAX_NEW_TOKENS for c in expected)
    assert rollout_greedy(model, stand_in, prompt_ids) == [[c] for c in expected]

"""Flags and defaults that several entry points share (train.py, evaluate.py, win_rate.py,
infer.py, extension/verify.py), each declared once here: the judge, the reply settings of an
evaluation, its prompts, and the defaults library functions fall back to.

    p = argparse.ArgumentParser()
    judge_flags(p.add_argument, required=True)
    prompt_flags(p.add_argument, default_data="the bundled SFT data")
    reply_flags(p.add_argument)

A leaf: it imports nothing of the project, so judges.py and generation.py read its constants.
"""
from __future__ import annotations

import argparse
from typing import Callable

SEED = 42                   # weights init, data order and sampling, in every script
MAX_LENGTH = 1024           # tokens of a conversation: training truncation, what a reward model reads
MAX_NEW_TOKENS = 128        # a reply's budget: sampled completions, validation and evaluation replies
BATCH_SIZE = 8              # rows per micro-batch, forward or generate call
# How a conversation longer than max_length is cut (tokenization.py): the first is TRL's default.
TRUNCATION_MODES = ("keep_start", "keep_end")
DEFAULT_TRUNCATION = "keep_start"
# How an encoder reward model summarises its last hidden states for the score head
# (reward_model.sequence_rewards); "auto" is the folder's own way (models.sentence_pooling).
REWARD_POOLINGS = ("auto", "cls", "mean", "reply")
# The seed project judged with NVIDIA's OpenAI-compatible API; the key is read from this variable.
JUDGE_BASE_URL = "https://integrate.api.nvidia.com/v1"
JUDGE_API_KEY_ENV = "NVIDIA_API_KEY"
JUDGE_KINDS = "a reward model (folder, Hub name or bt run), openai:MODEL, correctness or length"

Add = Callable[..., object]     # parser.add_argument, or flags.py's wrapper of it


def judge_flags(add: Add, *, required: bool = False, help: str | None = None) -> None:
    """--judge, and the endpoint of an openai:MODEL judge."""
    add("--judge", type=str, required=required, default=None, help=help or f"the judge: {JUDGE_KINDS}")
    add("--judge-base-url", type=str, default=JUDGE_BASE_URL,
        help="base URL of the openai:MODEL judge (default: NVIDIA's API, as the seed used)")
    add("--judge-api-key-env", type=str, default=JUDGE_API_KEY_ENV,
        help="environment variable holding the openai:MODEL judge's API key")


def prompt_flags(add: Add, *, default_data: str, num_prompts: int = 64) -> None:
    """The prompts of an evaluation: a data set's split, its first N rows."""
    add("--dataset-name", default=None, help=f"prompts and references (default: {default_data})")
    add("--split", choices=("train", "test"), default="test", help="which split's prompts")
    add("--num-prompts", type=int, default=num_prompts, help="first N rows of the split")
    add("--skip-bad-rows", action=argparse.BooleanOptionalAction, default=False,
        help="skip malformed rows instead of stopping")


def reply_flags(add: Add, *, max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = 0.0,
                top_p: float = 1.0) -> None:
    """How an evaluation's replies are generated: the same settings for every model compared."""
    add("--max-new-tokens", type=int, default=max_new_tokens, help="reply budget in tokens")
    add("--temperature", type=float, default=temperature, help="sampling temperature (0: greedy)")
    add("--top-p", type=float, default=top_p, help="nucleus sampling top-p")
    add("--seed", type=int, default=SEED, help="sampling seed, the same for every model")
    add("--batch-size", type=int, default=BATCH_SIZE, help="prompts per generate call")
    add("--use-gpu", action=argparse.BooleanOptionalAction, default=False, help="run on CUDA")

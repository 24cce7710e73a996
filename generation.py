"""Generate assistant replies with a causal LM: the one generation path that validation,
win rate and batch inference share.

Prompts are chat conversations rendered with the tokenizer's chat template and its
generation prompt; batches are left-padded (so every prompt ends where generation starts)
and generation stops at the end-of-turn token (the tokenizer's eos).
"""
from __future__ import annotations

import torch

from collate_functions import render


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                     batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None) -> list[str]:
    """Return one decoded reply per conversation (special tokens removed, stripped).
    temperature 0 is greedy decoding; above 0, nucleus sampling with top_p. With a seed the
    sampling draws from a private RNG stream (the global one is restored afterwards, so
    training's random state is untouched): two models given the same prompts and seed
    sample with the same random numbers."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, temperature, top_p)


def _generate(model, tokenizer, conversations, max_new_tokens, batch_size, temperature, top_p) -> list[str]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    replies = []
    for i in range(0, len(conversations), batch_size):
        texts = [render(tokenizer, c, add_generation_prompt=True) for c in conversations[i:i + batch_size]]
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        longest = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for b, ids in enumerate(encoded):         # left padding
            input_ids[b, longest - len(ids):] = torch.tensor(ids)
            attention_mask[b, longest - len(ids):] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None) if temperature > 0 else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                             **sampling)
        for row in out[:, longest:]:
            replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    if was_training:
        model.train()
    return replies

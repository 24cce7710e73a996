"""Generate assistant replies with a causal LM: the one generation path that validation,
win rate, evaluation and batch inference share.

    replies = generate_replies(model, tokenizer, conversations, max_new_tokens=128)       # one string each
    outs = generate_completions(model, tokenizer, conversations, num_beams=4,
                                length_penalty=0.9, num_return_sequences=4)            # Completions per prompt

Prompts are chat conversations rendered with the tokenizer's chat template and its
generation prompt; batches are left-padded (so every prompt ends where generation starts)
and generation stops at the end-of-turn token (the tokenizer's eos). temperature 0 is
greedy (or beam search with num_beams > 1); above 0, nucleus sampling with top_p.

Also the one progress bar (`progress_bar`) of the loops that can run for minutes without a
step of Lightning's own bar: validation replies, verifier scoring, win-rate replies and judging.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from tokenization import render


@dataclass
class Completion:
    """One generated reply. completion_tokens counts the generated tokens up to and
    including the end-of-turn token; finish_reason is "stop" (end-of-turn reached) or
    "length" (max_new_tokens reached first)."""
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


PROGRESS_DELAY_S = 2.0     # a loop shorter than this draws no bar


def progress_bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """A tqdm bar like Lightning's (count, rate, ETA) on stderr, drawn on rank 0 only. It shows
    up after PROGRESS_DELAY_S, so short loops (the tests', a tiny model's) draw nothing, and it
    is cleared when done, so Lightning's bar keeps its line. Iterate over it, or call .update(n)."""
    from tqdm import tqdm
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank_zero = not distributed or torch.distributed.get_rank() == 0
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not (enabled and rank_zero),
                delay=PROGRESS_DELAY_S, leave=False, file=sys.stderr, dynamic_ncols=True)


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                     batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int | None = None, progress: str | None = None) -> list[str]:
    """Return one decoded reply per conversation (special tokens removed, stripped).
    With a seed the sampling draws from a private RNG stream (the global one is restored
    afterwards, so training's random state is untouched): two models given the same prompts
    and seed sample with the same random numbers. progress: the label of a progress bar over
    the prompts (progress_bar), None for none."""
    outs = generate_completions(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, temperature=temperature, top_p=top_p, seed=seed,
                                progress=progress)
    return [o[0].text for o in outs]


@torch.no_grad()
def generate_completions(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 128,
                         batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
                         num_beams: int = 1, length_penalty: float = 1.0, num_return_sequences: int = 1,
                         seed: int | None = None, progress: str | None = None) -> list[list[Completion]]:
    """num_return_sequences Completions per conversation (beam search: the best beams first).
    Sampling uses a private RNG stream seeded by `seed`; progress labels a bar (see generate_replies)."""
    if num_return_sequences > num_beams and temperature == 0 and num_beams > 1:
        raise ValueError(f"beam search returns at most num_beams ({num_beams}) sequences, "
                         f"not {num_return_sequences}")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        return _generate(model, tokenizer, conversations, max_new_tokens, batch_size, temperature, top_p,
                         num_beams, length_penalty, num_return_sequences, progress)


NUCLEUS_CANDIDATES = 256    # the likeliest tokens nucleus_from_top_k sorts before it falls back to all


def nucleus_from_top_k(scores: torch.Tensor, top_p: float, k: int = NUCLEUS_CANDIDATES) -> torch.Tensor:
    """Nucleus (top-p) filtering with transformers' rule (TopPLogitsWarper): a token is kept while
    the tokens likelier than it hold less than top_p of the probability, and the likeliest always
    is; the others' scores become -inf. It sorts the k likeliest tokens, not the whole vocabulary:
    where they hold at least top_p, every other token is cut by the rule anyway. The rows where
    they do not take transformers' whole sort. (N, V) scores in, (N, V) out."""
    from transformers.generation.logits_process import TopPLogitsWarper
    if k >= scores.shape[-1]:
        return TopPLogitsWarper(top_p)(None, scores)
    top, index = scores.topk(k, dim=-1)                                        # descending
    probs = torch.exp(top - torch.logsumexp(scores, dim=-1, keepdim=True))
    mass = probs.cumsum(dim=-1)
    keep = mass - probs < top_p                                                 # what the likelier ones hold
    keep[:, 0] = True
    out = torch.full_like(scores, float("-inf")).scatter_(1, index, top.masked_fill(~keep, float("-inf")))
    short = mass[:, -1] < top_p
    if short.any():
        out[short] = TopPLogitsWarper(top_p)(None, scores[short])
    return out


def _temperature_and_nucleus(temperature: float, top_p: float):
    """A transformers logits processor: the temperature, then nucleus_from_top_k. Both in one,
    because generate runs a caller's processors before its own temperature warper."""
    from transformers import LogitsProcessor

    class TemperatureAndNucleus(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return nucleus_from_top_k(scores / temperature, top_p)
    return TemperatureAndNucleus()


def _decoding(temperature: float, top_p: float, num_beams: int = 1, length_penalty: float = 1.0) -> dict:
    if temperature > 0 and top_p < 1.0 and num_beams == 1:
        # transformers' top-p sorts the whole vocabulary every step: 17% of a 32-row SmolLM2
        # decoding step (2026-12-07); nucleus_from_top_k keeps the same tokens from a top-k.
        from transformers import LogitsProcessorList
        decoding = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                        logits_processor=LogitsProcessorList([_temperature_and_nucleus(temperature, top_p)]))
    elif temperature > 0:
        decoding = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
    else:
        decoding = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if num_beams > 1:
        decoding.update(num_beams=num_beams, length_penalty=length_penalty, early_stopping=True)
    return decoding


class _DecodingSteps:
    """A transformers generation streamer that advances a progress bar once per decoding step
    (its first call carries the prompts)."""

    def __init__(self, bar):
        self.bar, self.started = bar, False

    def put(self, value) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True

    def end(self) -> None:
        pass


def _generate_batch(model, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
                    num_return_sequences: int, decoding: dict, bar=None) -> list[list[list[int]]]:
    """Left-pad token-id prompts, generate, and cut each output after its first end-of-turn
    token: num_return_sequences token lists per prompt (eos included when it was reached).
    `bar` (not with beam search) advances once per decoding step."""
    device = next(model.parameters()).device
    longest = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(prompt_ids):         # left padding
        input_ids[b, longest - len(ids):] = torch.tensor(ids)
        attention_mask[b, longest - len(ids):] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                         max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                         num_return_sequences=num_return_sequences, **decoding,
                         **({"streamer": _DecodingSteps(bar)} if bar is not None else {}))
    generated = out[:, longest:].tolist()    # (B * num_return_sequences, new), grouped by prompt
    groups = []
    for b in range(len(prompt_ids)):
        group = []
        for row in generated[b * num_return_sequences:(b + 1) * num_return_sequences]:
            stop = row.index(eos_id) + 1 if eos_id in row else None
            # generate pads a row only after its eos: one without ran to max_new_tokens, every token
            # sampled, the pad id too (a base model's <|endoftext|> is often its pad token). Dropping
            # those made a rollout's update score a sequence other than the one sampled.
            group.append(row[:stop] if stop else row)
        groups.append(group)
    return groups


@torch.no_grad()
def sample_token_ids(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int,
                     num_return_sequences: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                     batch_size: int = 64, seed: int | None = None, progress: str | None = None) -> list[list[list[int]]]:
    """Completions as token ids for prompts given as token ids (RL rollouts, the length
    penalty): num_return_sequences lists per prompt, each ending with the end-of-turn token
    when generation stopped there (else max_new_tokens long). Token ids, not text, so the
    training step scores exactly the tokens that were sampled. Same private RNG stream as
    generate_completions; the model's train/eval mode is restored. progress: the label of a
    progress bar over the decoding steps (progress_bar), None for none."""
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    was_training = model.training
    model.eval()
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        batches = range(0, len(prompt_ids), batch_size)
        bar = progress_bar(desc=progress or "", total=len(batches) * max_new_tokens, unit="step",
                           enabled=progress is not None)
        for i in batches:
            out += _generate_batch(model, prompt_ids[i:i + batch_size], max_new_tokens, eos_id, pad_id,
                                   num_return_sequences, _decoding(temperature, top_p), bar)
            bar.n = (i // batch_size + 1) * max_new_tokens     # a batch that stopped early at eos
            bar.refresh()
        bar.close()
    model.train(was_training)
    return out


def _generate(model, tokenizer, conversations, max_new_tokens, batch_size, temperature, top_p, num_beams,
              length_penalty, num_return_sequences, progress) -> list[list[Completion]]:
    was_training = model.training
    model.eval()
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    decoding = _decoding(temperature, top_p, num_beams, length_penalty)
    bar = progress_bar(desc=progress or "", total=len(conversations), unit="prompt", enabled=progress is not None)
    results = []
    for i in range(0, len(conversations), batch_size):
        texts = [render(tokenizer, c, add_generation_prompt=True) for c in conversations[i:i + batch_size]]
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        groups = _generate_batch(model, encoded, max_new_tokens, eos_id, pad_id, num_return_sequences, decoding)
        for ids, group in zip(encoded, groups):
            results.append([Completion(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(ids),
                                       len(kept), "stop" if kept and kept[-1] == eos_id else "length")
                            for kept in group])
        bar.update(len(encoded))
    bar.close()
    if was_training:
        model.train()
    return results

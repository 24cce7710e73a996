"""Scalar reward models: loading, and the reward of a conversation.

A reward model is any `AutoModelForSequenceClassification` with one label. For decoder LMs
(Qwen2ForSequenceClassification, Llama...) the reward is the linear head's score at the last
real token of each sequence, found from the attention mask, so it is the same under left
and right padding; other trainers read it at "the last token that is not the pad id", which
breaks under left padding or when the pad id equals the end-of-turn id. Conversations are
cut right after the reply's end-of-turn token (reward_inputs), so that is the token read.
Encoders (BERT-style) pool on their own (the first token) and are given right padding.
"""
from __future__ import annotations

import torch

from losses.labels import IGNORE_INDEX
from tokenization import tokenize_conversation
from compilation import forward_of
from shared_flags import MAX_LENGTH


def is_decoder(model) -> bool:
    """Decoder classifiers apply their head (`score`) to every position's hidden state."""
    return hasattr(model, "score")


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None,
                     last: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One float32 reward per sequence, read at its last real token.

    Unpacked: (N, T) ids and mask, one sequence a row -> (N,) rewards.
    Packed (decoders only): attention_mask None, position_ids (N, T) restarting at 0 at each
    sequence (so attention stays within it), and last = (rows, columns), each (S,), of every
    sequence's last token -> (S,) rewards in that order.
    """
    if not is_decoder(model):
        return forward_of(model)(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
    if attention_mask is not None:
        # Positions count real tokens only, so a left-padded row sees the positions it would see unpadded.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = torch.arange(input_ids.shape[0], device=input_ids.device), (positions * attention_mask).argmax(-1)
    # --compile: the base model's compiled forward in training (compilation.py).
    hidden = forward_of(model.base_model)(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids, use_cache=False).last_hidden_state   # (N, T, H)
    # Only the scored positions go through the head.
    return model.score(hidden[last])[:, 0].float()


def reward_inputs(tokenizer, messages: list[dict], max_length: int) -> list[int] | None:
    """Token ids of a conversation up to and including its last reply's end-of-turn token
    (the chat template's trailing newline dropped); None if truncation removed the reply."""
    ids, labels = tokenize_conversation(tokenizer, messages, max_length, last_turn_only=True)
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    return ids[:labelled[-1] + 1] if labelled else None


@torch.no_grad()
def score_conversations(model, tokenizer, conversations: list[list[dict]], *, max_length: int = MAX_LENGTH,
                        batch_size: int = 8) -> list[float]:
    """Rewards of whole conversations (prompt + final assistant reply), right-padded batches.
    A conversation whose reply does not fit in max_length scores -inf."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    scores = []
    for i in range(0, len(conversations), batch_size):
        encoded = [reward_inputs(tokenizer, c, max_length) for c in conversations[i:i + batch_size]]
        kept = [e for e in encoded if e]
        rewards = iter([])
        if kept:
            longest = max(len(e) for e in kept)
            input_ids = torch.full((len(kept), longest), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for b, ids in enumerate(kept):
                input_ids[b, :len(ids)] = torch.tensor(ids)
                attention_mask[b, :len(ids)] = 1
            rewards = iter(sequence_rewards(model, input_ids.to(device), attention_mask.to(device)).tolist())
        scores.extend(next(rewards) if e else float("-inf") for e in encoded)
    model.train(was_training)
    return scores


def trim_pairs_to_reply_end(rows: list[dict]) -> list[dict]:
    """Tokenized preference rows (tokenize_preference_rows) -> the same rows cut after each
    reply's last labelled token, so the last real token of every sequence is the reply's
    end-of-turn token: the token the reward is read at."""
    for row in rows:
        for side in ("chosen", "rejected"):
            labels = row[f"{side}_labels"]
            end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
            row[f"{side}_input_ids"], row[f"{side}_labels"] = row[f"{side}_input_ids"][:end], labels[:end]
    return rows

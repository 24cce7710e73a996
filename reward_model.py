"""Scalar reward models: loading, and the reward of a conversation.

A reward model is any `AutoModelForSequenceClassification` with one label. For decoder LMs
(Qwen2ForSequenceClassification, Llama...) the reward is the linear head's score at the last
real token of each sequence, found from the attention mask, so it is the same under left
and right padding; other trainers read it at "the last token that is not the pad id", which
breaks under left padding or when the pad id equals the end-of-turn id. Conversations are
cut right after the reply's end-of-turn token (reward_inputs), so that is the token read; a
conversation longer than max_length keeps its end by default (the oldest prompt tokens go
first), so every reply is scored, however long the prompt before it.
Encoders (BERT-style) are given right padding and pool on their own (the [CLS] pooler), or,
where `config.reward_pooling` is "mean" (a sentence-transformers encoder that pools so,
models.sentence_pooling), by the mean of the last hidden states over the real tokens, or,
where it is "reply" (--reward-pooling reply), over the last reply's tokens only; then the
classifier head.
"""
from __future__ import annotations

import torch

from losses.labels import IGNORE_INDEX
from tokenization import tokenize_conversation, truncate
from compilation import forward_of
from shared_flags import DEFAULT_TRUNCATION, MAX_LENGTH

KEEP_END = "keep_end"      # a judge reads every reply, however long the prompt before it


def is_decoder(model) -> bool:
    """Decoder classifiers apply their head (`score`) to every position's hidden state."""
    return hasattr(model, "score")


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     position_ids: torch.Tensor | None = None,
                     last: tuple[torch.Tensor, torch.Tensor] | None = None,
                     reply_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One float32 reward per sequence, read at its last real token (decoders) or pooled
    (encoders, by config.reward_pooling).

    Unpacked: (N, T) ids and mask, one sequence a row -> (N,) rewards.
    Packed (decoders only): attention_mask None, position_ids (N, T) restarting at 0 at each
    sequence (so attention stays within it), and last = (rows, columns), each (S,), of every
    sequence's last token -> (S,) rewards in that order.
    reply_mask: (N, T) bool, the last reply's tokens; "reply" pooling averages over them.
    """
    if not is_decoder(model):
        pooling = getattr(model.config, "reward_pooling", "cls")
        if pooling not in ("mean", "reply"):
            return forward_of(model)(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()
        if pooling == "reply" and reply_mask is None:
            raise ValueError("reward_pooling 'reply' needs the reply's tokens (reply_mask).")
        hidden = forward_of(model.base_model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = (attention_mask if pooling == "mean" else reply_mask * attention_mask).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)        # mean over the pooled tokens
        return model.classifier(model.dropout(pooled))[:, 0].float()
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


def reward_inputs(tokenizer, messages: list[dict], max_length: int, truncation: str = KEEP_END) -> list[int] | None:
    """Token ids of a conversation up to and including its last reply's end-of-turn token
    (the chat template's trailing newline dropped), cut to max_length by `truncation`
    (tokenization.py); None if keep_start truncation removed the reply."""
    labelled = labelled_reward_inputs(tokenizer, messages, max_length, truncation)
    return None if labelled is None else labelled[0]


def labelled_reward_inputs(tokenizer, messages: list[dict], max_length: int,
                           truncation: str = KEEP_END) -> tuple[list[int], list[int]] | None:
    """reward_inputs' ids with their labels: the last reply's tokens labelled, IGNORE_INDEX elsewhere."""
    ids, labels = tokenize_conversation(tokenizer, messages, 1 << 30, last_turn_only=True)   # untruncated
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not labelled:
        return None
    ids, labels = truncate(ids[:labelled[-1] + 1], labels[:labelled[-1] + 1], max_length, truncation)
    if not any(label != IGNORE_INDEX for label in labels):
        return None
    return with_encoder_tokens(tokenizer, ids, labels, max_length, truncation)


def with_encoder_tokens(tokenizer, ids: list[int], labels: list[int], max_length: int,
                        truncation: str) -> tuple[list[int], list[int]]:
    """[CLS] ids [SEP] for a BERT-style tokenizer (it has both), cut to max_length by
    `truncation` first: the encoder was pretrained on such inputs, and the chat template
    alone renders none (MiniLM's [CLS] pooler would read the first word). Chat (decoder)
    tokenizers have neither; their ids are returned as they are."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        return ids, labels
    ids, labels = truncate(ids, labels, max_length - 2, truncation)
    return [cls, *ids, sep], [IGNORE_INDEX, *labels, IGNORE_INDEX]


@torch.no_grad()
def score_conversations(model, tokenizer, conversations: list[list[dict]], *, max_length: int = MAX_LENGTH,
                        batch_size: int = 8, truncation: str = KEEP_END) -> list[float]:
    """Rewards of whole conversations (prompt + final assistant reply), right-padded batches.
    Under keep_start, a conversation whose reply does not fit in max_length scores -inf."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    scores = []
    for i in range(0, len(conversations), batch_size):
        encoded = [labelled_reward_inputs(tokenizer, c, max_length, truncation) for c in conversations[i:i + batch_size]]
        kept = [e for e in encoded if e]
        rewards = iter([])
        if kept:
            longest = max(len(ids) for ids, _ in kept)
            input_ids = torch.full((len(kept), longest), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            reply_mask = torch.zeros_like(input_ids, dtype=torch.bool)
            for b, (ids, labels) in enumerate(kept):
                input_ids[b, :len(ids)] = torch.tensor(ids)
                attention_mask[b, :len(ids)] = 1
                reply_mask[b, :len(ids)] = torch.tensor(labels) != IGNORE_INDEX
            rewards = iter(sequence_rewards(model, input_ids.to(device), attention_mask.to(device),
                                            reply_mask=reply_mask.to(device)).tolist())
        scores.extend(next(rewards) if e else float("-inf") for e in encoded)
    model.train(was_training)
    return scores


def trim_pairs_to_reply_end(rows: list[dict], tokenizer=None, max_length: int | None = None,
                            truncation: str = DEFAULT_TRUNCATION) -> list[dict]:
    """Tokenized preference rows (tokenize_preference_rows) -> the same rows cut after each
    reply's last labelled token, so the last real token of every sequence is the reply's
    end-of-turn token: the token the reward is read at. Given the tokenizer, a BERT-style
    one's sequences get [CLS] and [SEP] (with_encoder_tokens), as reward_inputs gives them."""
    for row in rows:
        for side in ("chosen", "rejected"):
            labels = row[f"{side}_labels"]
            end = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1
            ids, labels = row[f"{side}_input_ids"][:end], labels[:end]
            if tokenizer is not None:
                ids, labels = with_encoder_tokens(tokenizer, ids, labels, max_length, truncation)
            row[f"{side}_input_ids"], row[f"{side}_labels"] = ids, labels
    return rows

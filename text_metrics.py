"""Text metrics of replies against references, shared by evaluate.py and experiments/replicate.py:
corpus BLEU (sacrebleu), mean character edit distance (Levenshtein), and the token-mean NLL
of the reference replies under a model.

    bleu(replies, references, 4); edit_distance(replies, references)
    reference_loss(model, tokenizer, prompts, references, max_length=1024, batch_size=8)
"""
from __future__ import annotations


def bleu(replies: list[str], references: list[str], order: int) -> float:
    """Corpus BLEU (0-100) with n-grams up to `order`, sacrebleu's default tokenizer (13a)."""
    from sacrebleu.metrics import BLEU
    return BLEU(max_ngram_order=order).corpus_score(replies, [references]).score


def edit_distance(replies: list[str], references: list[str]) -> float:
    """Mean character Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    from rapidfuzz.distance import Levenshtein
    return sum(Levenshtein.distance(a, b) for a, b in zip(replies, references, strict=True)) / len(replies)


def reference_loss(model, tokenizer, prompts: list[list[dict]], references: list[str], max_length: int,
                   batch_size: int) -> float:
    """Token-mean NLL of each reference reply (its tokens and end-of-turn token) after its prompt,
    over all rows: sum of token losses / supervised tokens (losses/sft.py), not a mean of row means."""
    import torch

    from collate_functions import pad_sft
    from losses.labels import IGNORE_INDEX
    from tokenization import tokenize_conversation
    from losses.sft import sft_loss
    examples = []
    for prompt, reference in zip(prompts, references):
        ids, labels = tokenize_conversation(tokenizer, prompt + [{"role": "assistant", "content": reference}],
                                            max_length, last_turn_only=True, truncation="keep_end")
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append({"input_ids": ids, "labels": labels})
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = pad_sft(examples[i:i + batch_size], tokenizer.pad_token_id)
            logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
            out = sft_loss(logits, batch.labels.to(device))
            nll, tokens = nll + out.nll_sum.item(), tokens + int(out.num_tokens)
    return nll / tokens if tokens else float("nan")

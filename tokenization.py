"""Chat template -> token ids and assistant-only labels, for every training type's rows.

collate_functions.py turns these into padded or packed, typed batches.

Every conversation is rendered with `tokenizer.apply_chat_template`, the one template used
in training, evaluation and inference. Assistant spans are found by rendering prefixes of
the conversation (so any template works, not only ChatML):

    start of turn i = len(render(messages[:i], add_generation_prompt=True))
    end of turn i   = len(render(messages[:i + 1]))

The characters in [start, end) are the assistant's reply and its end-of-turn token; they
are mapped to tokens through the fast tokenizer's offsets, so BPE merges across the
boundary cannot shift the mask. Whitespace-only tokens at the end of a span (ChatML's "\\n"
after <|im_end|>) are the template's separator, not something the model must say, and are
not supervised. System, user and tool turns and the assistant header are -100.

A conversation longer than max_length is cut by one of TRUNCATION_MODES: `keep_start` keeps
its first max_length tokens (what TRL does by default; a reply at the end of a long
multi-turn prompt is cut away, and such a row is dropped), `keep_end` keeps its last
max_length tokens, dropping the oldest prompt tokens first, so the reply and its
end-of-turn token survive (TRL's truncation_mode="keep_end"). Only a reply longer than
max_length itself loses its own first tokens under keep_end.
"""
from __future__ import annotations

import sys

from errors import UserError
from losses.labels import IGNORE_INDEX
from shared_flags import DEFAULT_TRUNCATION, TRUNCATION_MODES


class TemplateError(UserError, ValueError):
    """The tokenizer's chat template cannot be used for assistant-only masking."""


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(f"Tokenizer {tokenizer.name_or_path} has no chat template; "
                            f"set one with --chat-template (chatml, hh for Human:/Assistant: transcripts, or a "
                            f"Jinja file) or pick a chat tokenizer.")
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the [start, end) character span of every assistant turn."""
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:      # no prefix to render: where the reply starts is unknown
            raise TemplateError("A conversation that opens with an assistant turn cannot be masked: "
                                "the reply has no prompt before it.")
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not text.startswith(head) or not text.startswith(upto) or len(upto) < len(head):
            raise TemplateError(f"The chat template of {tokenizer.name_or_path} does not render "
                                f"conversation prefixes as prefixes of the whole conversation, "
                                f"so assistant turns cannot be located.")
        spans.append((len(head), len(upto)))
    return text, spans


def truncate(ids: list, labels: list, max_length: int, truncation: str) -> tuple[list, list]:
    """Cut ids and labels to max_length tokens: the first ones (keep_start) or the last (keep_end)."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_MODES)} (got {truncation!r})")
    if len(ids) <= max_length:
        return ids, labels
    if truncation == "keep_end":
        return ids[-max_length:], labels[-max_length:]
    return ids[:max_length], labels[:max_length]


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int, last_turn_only: bool = False,
                          truncation: str = DEFAULT_TRUNCATION) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 outside assistant turns, or outside the last assistant turn
    with `last_turn_only`, as preference completions need), cut to `max_length` tokens by
    `truncation` (module docstring)."""
    text, spans = assistant_char_spans(tokenizer, messages)
    if last_turn_only:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
        # Drop trailing separator tokens ("\n" after the end-of-turn token).
        while inside and not tokenizer.decode([ids[inside[-1]]]).strip():
            inside.pop()
        for t in inside:
            labels[t] = ids[t]
    if truncation == "keep_end" and len(ids) > max_length:
        # The separator after the last end-of-turn token is never supervised: do not spend a
        # token of the budget on it.
        while ids and labels[-1] == IGNORE_INDEX and any(label != IGNORE_INDEX for label in labels):
            ids, labels = ids[:-1], labels[:-1]
    return truncate(ids, labels, max_length, truncation)


def tokenize_sft_rows(rows, tokenizer, max_length: int, truncation: str = DEFAULT_TRUNCATION) -> tuple[list[dict], int]:
    """Tokenize canonical SFT rows; drop (and count) rows left with no supervised token."""
    out, dropped = [], 0
    for row in rows:
        ids, labels = tokenize_conversation(tokenizer, row["messages"], max_length, truncation=truncation)
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        example = {"input_ids": ids, "labels": labels, "row": row["row"]}
        if "task" in row:                  # sft_verifier: which term of the GenRM loss the row feeds
            example["is_generate"] = row["task"] == "generate"
        out.append(example)
    return out, dropped


def tokenize_preference_rows(rows, tokenizer, max_length: int,
                             truncation: str = DEFAULT_TRUNCATION) -> tuple[list[dict], dict]:
    """Canonical preference rows -> chosen and rejected ids/labels, where only the final reply
    (with its end-of-turn token) is labelled. Pairs whose replies are identical, or whose reply
    is truncated away (keep_start only), are dropped and counted."""
    out, dropped = [], {"identical": 0, "truncated": 0}
    for row in rows:
        if row["chosen"] == row["rejected"]:
            dropped["identical"] += 1
            continue
        example = {"row": row["row"]}
        for side in ("chosen", "rejected"):
            ids, labels = tokenize_conversation(tokenizer, row["prompt"] + row[side], max_length, last_turn_only=True,
                                                truncation=truncation)
            example[f"{side}_input_ids"], example[f"{side}_labels"] = ids, labels
        if all(x == IGNORE_INDEX for x in example["chosen_labels"]) or \
                all(x == IGNORE_INDEX for x in example["rejected_labels"]):
            dropped["truncated"] += 1
            continue
        out.append(example)
    return out, dropped


def tokenize_prompt_rows(rows, tokenizer, max_length: int,
                         truncation: str = DEFAULT_TRUNCATION) -> tuple[list[dict], dict]:
    """Canonical grpo rows -> prompt token ids (rendered with the generation prompt, so
    sampling starts where the assistant's reply does). A prompt of max_length tokens or more
    leaves no room to answer: keep_start drops it (and counts it), keep_end keeps its last
    max_length - 1 tokens (the latest turns and the generation prompt)."""
    out, dropped = [], {"truncated": 0}
    for row in rows:
        ids = tokenizer(render(tokenizer, row["prompt"], add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"]
        if len(ids) >= max_length and truncation == "keep_end":
            ids = truncate(ids, ids, max_length - 1, truncation)[0]
        if len(ids) >= max_length:
            dropped["truncated"] += 1
            continue
        out.append({"prompt_ids": ids, "prompt": row["prompt"], "reference": row["reference"], "row": row["row"]})
    return out, dropped


def tokenize_kto_rows(rows, tokenizer, max_length: int,
                      truncation: str = DEFAULT_TRUNCATION) -> tuple[list[dict], dict]:
    """Canonical kto rows -> the ids/labels of prompt + completion (only the completion labelled,
    cut to max_length as a dpo reply is), and for the mismatched sequences of kto's KL estimate
    (collate_functions.KTOCollator joins one row's prompt with another's completion) the uncut
    conversation split where its completion starts: prompt_ids, completion_ids and
    completion_labels (the completion's end-of-turn separator unlabelled). A row whose completion
    is truncated away (keep_start) is dropped and counted."""
    out, dropped = [], {"truncated": 0}
    for row in rows:
        messages = row["prompt"] + row["completion"]
        full_ids, full_labels = tokenize_conversation(tokenizer, messages, sys.maxsize, last_turn_only=True)
        ids, labels = (full_ids, full_labels) if len(full_ids) <= max_length else tokenize_conversation(
            tokenizer, messages, max_length, last_turn_only=True, truncation=truncation)
        if all(x == IGNORE_INDEX for x in labels):
            dropped["truncated"] += 1
            continue
        start = next(t for t, x in enumerate(full_labels) if x != IGNORE_INDEX)
        out.append({"input_ids": ids, "labels": labels, "label": row["label"], "row": row["row"],
                    "prompt_ids": full_ids[:start], "completion_ids": full_ids[start:],
                    "completion_labels": full_labels[start:]})
    return out, dropped

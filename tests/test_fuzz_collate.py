"""Property-based fuzzing (hypothesis) of the collators on the bundled tokenizer: random
conversations (any order of system, user, assistant and tool turns; unicode, empty strings,
the template's own special tokens inside contents) at random --max-length. Whatever comes
in, ids and labels stay aligned and within max_length, padding is masked, a label is always
its own token, and every labelled token decodes to text inside an assistant reply or its
end-of-turn token; untruncated, every assistant turn's end-of-turn token is labelled."""
import re
import unicodedata

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collate_functions import PreferenceCollator, SFTCollator, StepBatch
from losses.labels import IGNORE_INDEX
from tokenization import TemplateError, tokenize_conversation, tokenize_preference_rows, tokenize_sft_rows

END = "<|im_end|>"
FUZZ = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TRICKY = ["", " ", "\n", "\n\n", "  x  ", END, "<|im_start|>assistant\n", "The answer is 5.", "2 + 3 = 5",
          "日本語のテキスト", "🙂👍🏽", "e\u0301", "\t\r\n", "ß" * 5, "\u200b", "<|endoftext|>"]
text = st.one_of(st.sampled_from(TRICKY), st.text(max_size=40),
                 st.lists(st.sampled_from(TRICKY), max_size=3).map("".join))
ROLES = ("system", "user", "assistant", "tool")
message = st.builds(lambda role, content: {"role": role, "content": content}, st.sampled_from(ROLES), text)
# The data layer refuses a conversation that opens with an assistant turn (nothing to mask
# it against; test_opening_assistant_turn_is_refused), so the fuzzed ones open otherwise.
conversation = st.lists(message, min_size=1, max_size=6).filter(lambda m: m[0]["role"] != "assistant")
max_length = st.integers(min_value=1, max_value=200)


def labelled_runs(ids, labels) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label == IGNORE_INDEX:
            if run:
                runs.append(run)
            run = []
        else:
            run.append(token)
    return runs + ([run] if run else [])


def inside_some(decoded: str, targets: list[str]) -> bool:
    """The decoded run is a piece of one target. A run may start or stop inside a multi-byte
    character that byte-level BPE split over two tokens; decode shows that byte as U+FFFD, so
    the pieces around it must each lie in the same target."""
    pieces = [p for p in decoded.split("\ufffd") if p]
    # The tokenizer normalises to NFC ("e" + U+0301 comes back as U+00E9): compare normalised.
    targets = [unicodedata.normalize("NFC", t) for t in targets]
    return any(all(unicodedata.normalize("NFC", p) in t for p in pieces) for t in targets)


def check_labels(tokenizer, messages, ids, labels, limit, targets):
    assert len(ids) == len(labels) <= limit
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    for run in labelled_runs(ids, labels):
        decoded = tokenizer.decode(run)
        assert inside_some(decoded, targets), (decoded, targets)


@FUZZ
@given(messages=conversation, limit=max_length)
def test_labels_only_ever_cover_assistant_turns(tokenizer, messages, limit):
    ids, labels = tokenize_conversation(tokenizer, messages, limit)
    replies = [m["content"] + END for m in messages if m["role"] == "assistant"]
    check_labels(tokenizer, messages, ids, labels, limit, replies)
    full_ids, full_labels = tokenize_conversation(tokenizer, messages, 10**6)
    assert ids == full_ids[:limit] and labels == full_labels[:limit]      # truncation only cuts
    # Untruncated, every assistant turn's end-of-turn token is supervised (and a literal
    # <|im_end|> inside a reply, which the tokenizer reads as that token, too).
    end_id = tokenizer.convert_tokens_to_ids(END)
    expected = sum(len(re.findall(re.escape(END), r)) for r in replies)
    assert sum(1 for t, label in zip(full_ids, full_labels) if label == end_id == t) == expected
    # last_turn_only: nothing but the last assistant reply.
    _, last_labels = tokenize_conversation(tokenizer, messages, 10**6, last_turn_only=True)
    check_labels(tokenizer, messages, full_ids, last_labels, 10**6, replies[-1:] or [""])


@FUZZ
@given(conversations=st.lists(conversation, min_size=1, max_size=5), limit=max_length,
       micro=st.integers(min_value=1, max_value=3))
def test_sft_rows_and_collator_keep_masks_and_shapes(tokenizer, conversations, limit, micro):
    rows = [{"messages": m, "row": i} for i, m in enumerate(conversations)]
    examples, dropped = tokenize_sft_rows(rows, tokenizer, limit)
    assert len(examples) + dropped == len(rows)
    for e in examples:
        assert any(label != IGNORE_INDEX for label in e["labels"])
        replies = [m["content"] + END for m in conversations[e["row"]] if m["role"] == "assistant"]
        check_labels(tokenizer, conversations[e["row"]], e["input_ids"], e["labels"], limit, replies)
    if not examples:
        return
    pad = tokenizer.pad_token_id
    batch = SFTCollator(pad)(examples)
    B, T = batch.input_ids.shape
    assert (B, T) == (len(examples), max(len(e["input_ids"]) for e in examples))
    assert batch.attention_mask.shape == batch.labels.shape == (B, T)
    assert batch.attention_mask.sum(1).tolist() == [len(e["input_ids"]) for e in examples]
    padding = batch.attention_mask == 0
    assert bool((batch.input_ids[padding] == pad).all()) and bool((batch.labels[padding] == IGNORE_INDEX).all())
    supervised = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[supervised], batch.input_ids[supervised])
    step = SFTCollator(pad, micro)(examples)
    assert isinstance(step, StepBatch) and len(step.micro_batches) == -(-B // micro)
    assert step.count == sum(mb.num_tokens for mb in step.micro_batches) == batch.num_tokens


reply = st.builds(lambda content: [{"role": "assistant", "content": content}], text)


@FUZZ
@given(pairs=st.lists(st.tuples(conversation, reply, reply), min_size=1, max_size=4), limit=max_length)
def test_preference_rows_label_only_the_reply(tokenizer, pairs, limit):
    rows = [{"prompt": p, "chosen": c, "rejected": r, "row": i} for i, (p, c, r) in enumerate(pairs)]
    examples, dropped = tokenize_preference_rows(rows, tokenizer, limit)
    assert dropped["identical"] == sum(c == r for _, c, r in pairs)
    assert len(examples) + dropped["identical"] + dropped["truncated"] == len(rows)
    for e in examples:
        prompt, chosen, rejected = pairs[e["row"]]
        for side, answer in (("chosen", chosen), ("rejected", rejected)):
            check_labels(tokenizer, prompt + answer, e[f"{side}_input_ids"], e[f"{side}_labels"], limit,
                         [answer[0]["content"] + END])
            assert any(label != IGNORE_INDEX for label in e[f"{side}_labels"])
    if not examples:
        return
    batch = PreferenceCollator(tokenizer.pad_token_id)(examples)
    B = len(examples)
    assert batch.input_ids.shape[0] == 2 * B and batch.count == B
    lengths = [len(e["chosen_input_ids"]) for e in examples] + [len(e["rejected_input_ids"]) for e in examples]
    assert batch.attention_mask.sum(1).tolist() == lengths
    padding = batch.attention_mask == 0
    assert bool((batch.labels[padding] == IGNORE_INDEX).all())
    for b, e in enumerate(examples):        # rows 0..B-1 chosen, B..2B-1 rejected, in order
        n = len(e["chosen_input_ids"])
        assert batch.input_ids[b, :n].tolist() == e["chosen_input_ids"]
        assert batch.labels[B + b, :len(e["rejected_labels"])].tolist() == e["rejected_labels"]


def test_opening_assistant_turn_is_refused(tokenizer):
    with pytest.raises(TemplateError, match="opens with an assistant turn"):
        tokenize_conversation(tokenizer, [{"role": "assistant", "content": "Hi."}], 64)

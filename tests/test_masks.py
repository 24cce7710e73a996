"""Assistant-only labels: golden token ids on the bundled tokenizer (ChatML), multi-turn,
system prompts, another template, truncation, and padding into a typed batch."""
import copy

import pytest
import torch

from collate_functions import SFTCollator
from losses.labels import IGNORE_INDEX
from tokenization import (TemplateError, render, tokenize_conversation, tokenize_preference_rows, tokenize_prompt_rows,
                          tokenize_sft_rows)

IM_START, IM_END, NL = 1, 2, 201       # <|im_start|>, <|im_end|>, "\n" in embedded/model's vocabulary

SINGLE = [{"role": "user", "content": "What is 2 + 3?"},
          {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}]
SYSTEM = [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "What is 2 + 3?"},
          {"role": "assistant", "content": "The answer is 5."}]
MULTI = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "The answer is 3."},
         {"role": "user", "content": "Now add 4."}, {"role": "assistant", "content": "The answer is 7."}]


def supervised(ids, labels):
    return [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]


def test_single_turn_golden_ids(tokenizer):
    ids, labels = tokenize_conversation(tokenizer, SINGLE, 1024)
    # <|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n2 + 3 = 5. The answer is 5.<|im_end|>\n
    assert ids == [1, 313, 201, 57, 466, 289, 223, 20, 290, 223, 21, 33, 2, 201,
                   1, 299, 201, 20, 290, 223, 21, 273, 223, 23, 16, 283, 294, 289, 223, 23, 16, 2, 201]
    assert labels == [IGNORE_INDEX] * 17 + ids[17:32] + [IGNORE_INDEX]
    assert supervised(ids, labels)[-1] == IM_END                 # end of turn is supervised
    assert tokenizer.decode(supervised(ids, labels)) == "2 + 3 = 5. The answer is 5.<|im_end|>"


def test_system_prompt_golden_ids(tokenizer):
    ids, labels = tokenize_conversation(tokenizer, SYSTEM, 1024)
    assert ids[:9] == [IM_START, 505, NL, 36, 71, 965, 16, IM_END, NL]       # system turn, unsupervised
    assert supervised(ids, labels) == [282, 294, 289, 223, 23, 16, IM_END]   # "The answer is 5.<|im_end|>"
    assert sum(label != IGNORE_INDEX for label in labels) == 7


def test_multi_turn_every_assistant_turn(tokenizer):
    ids, labels = tokenize_conversation(tokenizer, MULTI, 1024)
    assert supervised(ids, labels) == [282, 294, 289, 223, 21, 16, IM_END, 282, 294, 289, 223, 25, 16, IM_END]
    # The assistant header of each turn ("<|im_start|>assistant\n") is never supervised.
    for t in range(len(ids) - 2):
        if ids[t] == IM_START:
            assert labels[t] == labels[t + 1] == labels[t + 2] == IGNORE_INDEX


def test_any_template_that_renders_prefixes(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.chat_template = ("{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
                           "{% if add_generation_prompt %}### assistant:\n{% endif %}")
    ids, labels = tokenize_conversation(other, MULTI, 1024)
    # Each reply is supervised; the template's "\n\n" separator after it is not.
    assert other.decode(supervised(ids, labels)) == "The answer is 3.The answer is 7."


def test_template_that_is_not_prefix_consistent_is_refused(tokenizer):
    other = copy.deepcopy(tokenizer)
    # Renders the turn count up front, so a prefix is not a prefix of the whole.
    other.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TemplateError, match="does not render conversation prefixes"):
        tokenize_conversation(other, MULTI, 1024)


def test_missing_chat_template_is_one_sentence(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.chat_template = None
    with pytest.raises(TemplateError, match="has no chat template"):
        tokenize_conversation(other, SINGLE, 1024)


def test_truncation_drops_rows_without_supervised_tokens(tokenizer):
    rows = [{"messages": SINGLE, "row": 0}, {"messages": SYSTEM, "row": 1}]
    kept, dropped = tokenize_sft_rows(rows, tokenizer, max_length=20)
    # SINGLE's reply starts at token 17, so 3 of its tokens survive; SYSTEM's starts at 26: dropped.
    assert dropped == 1 and [r["row"] for r in kept] == [0]
    assert len(kept[0]["input_ids"]) == 20 and supervised(kept[0]["input_ids"], kept[0]["labels"]) == [20, 290, 223]


def test_collator_pads_right_and_groups_micro_batches(tokenizer):
    rows, _ = tokenize_sft_rows([{"messages": m, "row": i} for i, m in enumerate([SINGLE, SYSTEM, MULTI])],
                                tokenizer, 1024)
    batch = SFTCollator(pad_id=tokenizer.pad_token_id)(rows)
    assert batch.input_ids.shape == (3, 46) and batch.labels.shape == (3, 46)
    assert batch.attention_mask.sum(1).tolist() == [33, 34, 46]
    assert (batch.input_ids[0, 33:] == tokenizer.pad_token_id).all() and (batch.labels[0, 33:] == IGNORE_INDEX).all()
    assert batch.num_tokens == 15 + 7 + 14
    step = SFTCollator(pad_id=tokenizer.pad_token_id, micro_batch_size=2)(rows)
    assert [mb.input_ids.shape for mb in step.micro_batches] == [torch.Size([2, 34]), torch.Size([1, 46])]
    assert step.count == batch.num_tokens


def test_keep_end_drops_the_oldest_tokens_and_keeps_the_reply(tokenizer):
    full_ids, full_labels = tokenize_conversation(tokenizer, SINGLE, 1024)
    ids, labels = tokenize_conversation(tokenizer, SINGLE, 20, truncation="keep_end")
    # The trailing separator (the "\n" after <|im_end|>, never supervised) goes first, then the oldest tokens.
    assert ids == full_ids[12:32] and labels == full_labels[12:32]
    assert supervised(ids, labels) == full_ids[17:32] and ids[-1] == IM_END
    # A conversation that fits is not changed by either mode.
    assert tokenize_conversation(tokenizer, SINGLE, 33, truncation="keep_end") == (full_ids, full_labels)


def test_keep_end_keeps_rows_that_keep_start_drops(tokenizer):
    rows = [{"messages": SINGLE, "row": 0}, {"messages": SYSTEM, "row": 1}]
    kept, dropped = tokenize_sft_rows(rows, tokenizer, max_length=20, truncation="keep_end")
    assert dropped == 0 and [r["row"] for r in kept] == [0, 1]
    assert tokenizer.decode(supervised(kept[1]["input_ids"], kept[1]["labels"])) == "The answer is 5.<|im_end|>"
    pairs = [{"prompt": MULTI[:3], "chosen": [MULTI[3]], "rejected": [{"role": "assistant", "content": "No."}],
              "row": 0}]
    assert tokenize_preference_rows(pairs, tokenizer, 12)[1] == {"identical": 0, "truncated": 1}
    examples, dropped = tokenize_preference_rows(pairs, tokenizer, 12, truncation="keep_end")
    assert dropped == {"identical": 0, "truncated": 0}
    assert tokenizer.decode(supervised(examples[0]["chosen_input_ids"], examples[0]["chosen_labels"])) == \
        "The answer is 7.<|im_end|>"
    assert len(examples[0]["chosen_input_ids"]) == 12
    prompts = [{"prompt": MULTI[:3], "reference": "7", "row": 0}]
    assert tokenize_prompt_rows(prompts, tokenizer, 10)[1] == {"truncated": 1}
    kept_prompts, dropped = tokenize_prompt_rows(prompts, tokenizer, 10, truncation="keep_end")
    whole = tokenizer(render(tokenizer, MULTI[:3], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert dropped == {"truncated": 0} and kept_prompts[0]["prompt_ids"] == whole[-9:]


def test_reward_inputs_keep_the_reply_under_keep_end(tokenizer):
    from reward_model import reward_inputs
    whole = reward_inputs(tokenizer, SYSTEM, 1024)
    assert whole[-1] == IM_END and reward_inputs(tokenizer, SYSTEM, 10) == whole[-10:]
    assert reward_inputs(tokenizer, SYSTEM, 20, truncation="keep_start") is None      # reply starts at token 26

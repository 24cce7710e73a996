"""Reward models: the reward is read at the last real token under left and right padding,
for decoder LMs and encoders; conversations end at the reply's end-of-turn token."""
import torch

import logprobs
from conftest import EMBEDDED_MODEL
from models import load_reward_model
from reward_model import reward_inputs, score_conversations, sequence_rewards, trim_pairs_to_reply_end

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}],
    [{"role": "user", "content": "Tom has 4 apples."}, {"role": "assistant", "content": "Fine."}],
]


def _pad(sequences, pad_id, left):
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(sequences):
        window = slice(longest - len(s), longest) if left else slice(0, len(s))
        ids[b, window], mask[b, window] = torch.tensor(s), 1
    return ids, mask


def test_decoder_reward_is_the_same_under_left_and_right_padding(tokenizer):
    torch.manual_seed(0)
    model = load_reward_model(str(EMBEDDED_MODEL), tokenizer.pad_token_id).eval()
    sequences = [reward_inputs(tokenizer, c, 1024) for c in CONVERSATIONS]
    assert len(sequences[0]) != len(sequences[1])          # so one row is padded
    alone = torch.cat([sequence_rewards(model, *_pad([s], 0, left=False)) for s in sequences])
    right = sequence_rewards(model, *_pad(sequences, tokenizer.pad_token_id, left=False))
    left = sequence_rewards(model, *_pad(sequences, tokenizer.pad_token_id, left=True))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    # HF's own pooling agrees where it is right (right padding, pad id never inside a sequence).
    ids, mask = _pad(sequences, tokenizer.pad_token_id, left=False)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits[:, 0], alone, atol=1e-5, rtol=0)
    assert abs(alone[0] - alone[1]) > 1e-4                 # different conversations, different rewards
    torch.testing.assert_close(torch.tensor(score_conversations(model, tokenizer, CONVERSATIONS, batch_size=2)),
                               alone, atol=1e-5, rtol=0)


def test_pad_id_equal_to_end_of_turn_does_not_move_the_read_position(tokenizer):
    """Qwen-style setups where the pad id is also a real token: the mask, not the id, decides."""
    torch.manual_seed(0)
    model = load_reward_model(str(EMBEDDED_MODEL), tokenizer.pad_token_id).eval()
    sequences = [reward_inputs(tokenizer, c, 1024) for c in CONVERSATIONS]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(s[-1] == eos for s in sequences)            # the reward is read at the end of the turn
    alone = torch.cat([sequence_rewards(model, *_pad([s], 0, left=False)) for s in sequences])
    torch.testing.assert_close(sequence_rewards(model, *_pad(sequences, eos, left=True)), alone, atol=1e-5, rtol=0)


def test_encoder_reward_model_pools_its_own_way():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                     pad_token_id=0)).eval()
    sequences = [[5, 6, 7, 8, 9], [5, 10, 11]]
    alone = torch.cat([sequence_rewards(model, *_pad([s], 0, left=False)) for s in sequences])
    torch.testing.assert_close(sequence_rewards(model, *_pad(sequences, 0, left=False)), alone, atol=1e-5, rtol=0)
    # Bidirectional attention crosses packed sequences: train.py trains it padded instead.
    assert not logprobs.supports_packing(model)
    assert logprobs.supports_packing(load_reward_model(str(EMBEDDED_MODEL), 0))


def test_training_rows_end_at_the_end_of_turn_token(tokenizer):
    from tokenization import tokenize_preference_rows
    rows, _ = tokenize_preference_rows([{"prompt": CONVERSATIONS[0][:1], "chosen": CONVERSATIONS[0][1:],
                                         "rejected": [{"role": "assistant", "content": "The answer is 6."}],
                                         "row": 0}], tokenizer, 1024)
    rows = trim_pairs_to_reply_end(rows)
    assert tokenizer.decode(rows[0]["chosen_input_ids"]).endswith("The answer is 5.<|im_end|>")
    assert rows[0]["chosen_input_ids"] == reward_inputs(tokenizer, CONVERSATIONS[0], 1024)

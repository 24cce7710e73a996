"""--disable-dropout: on by default for the pairwise losses (dpo, bt) only, and when on, a
training-mode forward is deterministic (two passes agree) where it was not."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

import flags
from models import disable_dropout


@pytest.mark.parametrize("argv, expected", [
    (["--training-type", "bt"], True),
    (["--training-type", "dpo"], True),
    (["--training-type", "sft"], False),
    (["--training-type", "grpo"], False),
    (["--training-type", "sft_verifier"], False),
    (["--training-type", "bt", "--no-disable-dropout"], False),
    (["--training-type", "sft", "--disable-dropout"], True),
])
def test_the_default_is_on_for_the_pairwise_losses_and_a_flag_overrides_it(argv, expected):
    assert flags.resolve(flags.parse_config(argv)[0]).model.disable_dropout is expected


def _two_forwards(model, input_ids):
    model.train()
    torch.manual_seed(0)
    first = model(input_ids=input_ids).logits
    second = model(input_ids=input_ids).logits
    return first, second


def test_an_encoder_with_dropout_forwards_deterministically_in_training_mode_once_disabled():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3, num_labels=1))
    input_ids = torch.randint(0, 50, (3, 7))
    first, second = _two_forwards(model, input_ids)
    assert not torch.allclose(first, second)              # dropout draws a new mask each pass
    # Embeddings, 2 x (attention probs, attention output, feed-forward output), the classifier's.
    assert disable_dropout(model) == 8
    first, second = _two_forwards(model, input_ids)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(model(input_ids=input_ids).logits, first, rtol=0, atol=0)   # = eval mode
    assert disable_dropout(model) == 0                    # nothing left to turn off


def test_a_decoder_attention_dropout_rate_is_turned_off_too():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, attention_dropout=0.5))
    input_ids = torch.randint(0, 50, (2, 6))
    first, second = _two_forwards(model, input_ids)
    assert not torch.allclose(first, second)
    assert disable_dropout(model) == 2                    # the float rate of each attention layer
    first, second = _two_forwards(model, input_ids)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_a_run_trains_its_model_in_training_mode(tmp_path, monkeypatch):
    """from_pretrained hands back a model in eval mode, and Lightning does not switch it: the
    module must, or dropout and activation checkpointing stay off (as they did until 2026-12-03)."""
    import train
    from module import PostTrainingModule
    modes = []
    step = PostTrainingModule.training_step

    def recording(self, batch, batch_idx):
        modes.append(all(m.training for m in self.model.modules()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(PostTrainingModule, "training_step", recording)
    assert train.main(["--storage-path", str(tmp_path), "--name", "sft", "--train-dataset-length", "16",
                       "--test-dataset-length", "8", "--batch-size", "8", "--max-epochs", "2",
                       "--val-generations", "0"]) == 0
    assert modes == [True] * 4          # also the steps after the first epoch's validation

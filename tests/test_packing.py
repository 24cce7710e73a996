"""--packing: first-fit-decreasing bins, and a packed step gives the loss and gradients of the
same examples unpacked (SFT and sft_verifier, through the module, accumulation included)."""
import pytest
import torch

import flags
import train
from collate_functions import SFTCollator, first_fit_decreasing, pack_sft


def test_first_fit_decreasing_hand_worked():
    """Lengths [5, 9, 3, 7, 2], capacity 10. Longest first: 9 opens bin A (room 1), 7 opens
    B (room 3), 5 opens C (room 5), 3 fits B (room 0), 2 fits C (room 3)."""
    assert first_fit_decreasing([5, 9, 3, 7, 2], 10) == [[1], [3, 2], [0, 4]]


def test_pack_sft_layout():
    examples = [{"input_ids": [11, 12, 13], "labels": [11, -100, 13]}, {"input_ids": [21, 22], "labels": [21, 22]}]
    batch = pack_sft(examples, pad_id=0, capacity=6)
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22]]
    # Each conversation's first token is never a target (it is not one unpacked either).
    assert batch.labels.tolist() == [[-100, -100, 13, -100, 22]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    two_rows = pack_sft(examples, pad_id=0, capacity=4)
    assert two_rows.input_ids.tolist() == [[11, 12, 13], [21, 22, 0]]
    assert two_rows.position_ids.tolist() == [[0, 1, 2], [0, 1, 0]]      # the padding its own run
    assert two_rows.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("training_type", ["sft", "sft_verifier"])
def test_packed_step_equals_unpacked_step(tokenizer, training_type):
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--training-type", training_type, "--train-dataset-length", "12",
                                    "--batch-size", "6", "--accumulate-grad-batches", "2", "--max-length", "256"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = list(loaders["train"].dataset)[:12]
    module = PostTrainingModule(config, tokenizer=tokenizer)

    def step(collator):
        batch = collator(rows)
        module.zero_grad(set_to_none=True)
        loss, total = 0.0, {}
        for mb in batch.micro_batches:
            mb_loss, sums = module.compute(mb, normalizer=batch.count)
            mb_loss.backward()
            loss += mb_loss.item()
            for k, v in sums.items():
                total[k] = total.get(k, 0.0) + float(v)
        return batch, loss, total, {n: p.grad.clone() for n, p in module.named_parameters()}

    plain, plain_loss, plain_sums, plain_grads = step(SFTCollator(tokenizer.pad_token_id, micro_batch_size=6))
    packed, packed_loss, packed_sums, packed_grads = step(
        SFTCollator(tokenizer.pad_token_id, micro_batch_size=6, pack_capacity=256))
    assert packed.micro_batches[0].position_ids is not None
    assert sum(mb.input_ids.numel() for mb in packed.micro_batches) < sum(mb.input_ids.numel() for mb in plain.micro_batches)
    assert packed.count == plain.count
    if training_type == "sft_verifier":
        assert all(c > 0 for c in packed.count)            # both tasks present
    assert abs(packed_loss - plain_loss) < 1e-5
    for k, v in plain_sums.items():
        assert abs(packed_sums[k] - v) < 1e-4 * max(1.0, abs(v)), k
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packing_flag_only_for_token_losses():
    config, given = flags.parse_config(["--training-type", "dpo", "--no-packing"])
    with pytest.raises(flags.ConfigError, match="--packing only applies"):
        flags.validate(config, given)
